"""A synchronous client of the controller's HTTP API (for the `povd` client commands).

The service's URL: `--url`, else $POVD_URL, else http://127.0.0.1:8470. The token from
`povd login` is kept in the user's config dir (platformdirs: ~/.config/povd/token on Linux,
or $POVD_TOKEN_FILE), mode 0600, together with the URL it was issued by: a token is only
ever sent back to the service that issued it.

Commands answer a `CommandReply` whether accepted or refused (HTTP 200, or 403 / 404 / 409 with
a CommandReply body, see controller.service.api); every other failure raises `ClientError`."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import platformdirs

from controller.service.protocol import CommandReply

DEFAULT_URL = "http://127.0.0.1:8470"
_REFUSAL_STATUSES = frozenset({403, 404, 409})


class ClientError(Exception):
    """A call that got no usable answer: why, and the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def resolve_url(cli_value: str | None) -> str:
    return (cli_value or os.environ.get("POVD_URL") or DEFAULT_URL).rstrip("/")


# --------------------------------------------------------------------------------------------
# Token storage


def token_path() -> Path:
    override = os.environ.get("POVD_TOKEN_FILE")
    if override:
        return Path(override)
    return Path(platformdirs.user_config_dir("povd")) / "token"


def save_token(token: str, url: str, *, username: str | None = None,
               expires_at: float | None = None) -> Path:
    """Write the token (and the URL it belongs to) readable by the owner only."""
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"url": url.rstrip("/"), "token": token, "username": username,
           "expires_at": expires_at}
    # Created 0600 from the start: never a moment when others could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file may have had looser permissions
        f.write(json.dumps(doc))
    return path


def load_token(url: str) -> str | None:
    """The saved token if it was issued by `url`, else None."""
    try:
        doc = json.loads(token_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("url") != url.rstrip("/"):
        return None
    token = doc.get("token")
    return token if isinstance(token, str) else None


def forget_token() -> None:
    with contextlib.suppress(FileNotFoundError):
        token_path().unlink()


# --------------------------------------------------------------------------------------------
# The client


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    return json.dumps(body)


class ServiceClient:
    """Blocking calls to one service. A context manager: closes its connection pool on exit."""

    def __init__(self, url: str, token: str | None = None, *,
                 transport: httpx.BaseTransport | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.url, transport=transport, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, json_body: Any = None,
              params: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            return self._http.request(method, path, json=json_body, params=params,
                                      headers=headers)
        except httpx.TimeoutException as exc:
            raise ClientError(f"no answer from the service at {self.url} in time") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the service at {self.url}: {exc}") from exc

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code == 401:
            raise ClientError(f"not logged in or the session expired ({_detail(response)}): "
                              "run `povd login`", 401)
        if response.status_code >= 400:
            raise ClientError(f"{response.status_code}: {_detail(response)}",
                              response.status_code)
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(f"not a povd service at {self.url} (no JSON answer)",
                              response.status_code) from exc

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._check(self._send("GET", path, params=params))

    # -- calls -----------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        """{token, expires_at, role, username}; the client keeps the token for later calls."""
        response = self._send("POST", "/api/login",
                              json_body={"username": username, "password": password})
        if response.status_code == 401:
            raise ClientError("wrong user name or password", 401)
        reply: dict[str, Any] = self._check(response)
        self.token = reply["token"]
        return reply

    def logout(self) -> None:
        self._check(self._send("POST", "/api/logout"))
        self.token = None

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/api/whoami")
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/api/status")
        return result

    def alarms(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/api/alarms")
        return result

    def events(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/api/events",
                                                 {"since": since, "limit": limit})
        return result

    def runs(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/api/runs")
        return result

    def run(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/api/runs/{run_id}")
        return result

    def validate(self, text: str, efficiency: float = 0.5) -> dict[str, Any]:
        result: dict[str, Any] = self._check(self._send(
            "POST", "/api/recipes/validate", json_body={"text": text, "efficiency": efficiency}))
        return result

    def command(self, name: str, args: dict[str, Any] | None = None,
                reason: str | None = None) -> CommandReply:
        """Accepted or refused, with the reason; ClientError if there was no such answer."""
        response = self._send("POST", f"/api/commands/{name}",
                              json_body={"args": args or {}, "reason": reason})
        if response.status_code in _REFUSAL_STATUSES:
            with contextlib.suppress(ValueError):
                body = response.json()
                if isinstance(body, dict) and "accepted" in body:
                    return _reply(body)
        return _reply(self._check(response))


def _reply(body: Any) -> CommandReply:
    if not isinstance(body, dict) or "accepted" not in body:
        raise ClientError(f"not a command reply: {body!r}")
    return CommandReply(
        command=str(body.get("command", "")),
        accepted=bool(body["accepted"]),
        reason=body.get("reason"),
        state=body.get("state"),
        data=dict(body.get("data") or {}),
    )
