"""Users, their Argon2id password hashes, and the bearer tokens issued at login.

`UserStore` keeps users in one JSON file (mode 0600) on the line PC. Only Argon2id hashes are
stored (argon2-cffi's `PasswordHasher`); a hash made with older parameters is replaced at the
next successful login. The file is rewritten atomically (temporary file, fsync, rename) under an
advisory lock, and re-read whenever it changes on disk, so `povd users remove` run beside the
service takes effect at once: the service sees the change at the next token check.

`TokenIssuer` hands out random tokens (`secrets`), keeps only their SHA-256 with the user and an
expiry, and resolves a token to the user's *current* record: a removed user, a changed password
or an expired token resolves to nothing, and a changed role applies at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from controller.service.roles import Role

log = structlog.get_logger(__name__)

MIN_PASSWORD = 8
# Bounded so a login cannot make the hasher chew on megabytes.
MAX_PASSWORD = 1024
# Usable as an MQTT topic segment and a file name: no '+', '#', '/', spaces.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
STORE_VERSION = 1
DEFAULT_TOKEN_TTL_S = 8 * 3600.0

Clock = Callable[[], float]


class UserError(Exception):
    """A user operation refused: which user, and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"user {name!r}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class User:
    name: str
    role: Role


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(
            name,
            "a user name is 1-32 characters: a lower-case letter, then lower-case letters, "
            "digits, '.', '_' or '-'",
        )


def _check_password(name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(name, f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(name, f"password too long: at most {MAX_PASSWORD} characters")
    if password.strip() != password or not password.isprintable():
        raise UserError(name, "password has leading/trailing spaces or control characters")


def _role(name: str, role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise UserError(name, f"unknown role {role!r} (one of {choices})") from None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class UserStore:
    """Users in a JSON file: {"version": 1, "users": {name: {"role", "hash"}}}."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        # Injectable so tests can use cheap parameters; the default is argon2-cffi's
        # RFC 9106 low-memory Argon2id profile.
        self.hasher = hasher or PasswordHasher()
        # An unknown user is still checked against a hash, so a login takes as long either
        # way; made on first need (`povd users list` should not pay for it).
        self._dummy: str | None = None
        self._users: dict[str, dict[str, str]] = {}
        self._stamp: tuple[int, int, int] | None = None
        # The API verifies passwords in worker threads and resolves tokens on the event loop.
        self._cache_lock = threading.RLock()

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_hex(16))
        return self._dummy

    # -- file ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers across processes (the service and `povd users`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _refresh(self) -> dict[str, dict[str, str]]:
        with self._cache_lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            return self._users
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                users = json.loads(self.path.read_text(encoding="utf-8"))["users"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UserError("*", f"cannot read the user store {self.path}: {exc}") from exc
            if not isinstance(users, dict):
                raise UserError("*", f"cannot read the user store {self.path}: no users map")
            self._users, self._stamp = users, stamp
        return self._users

    def _save(self, users: dict[str, dict[str, str]]) -> None:
        doc: dict[str, Any] = {"version": STORE_VERSION, "users": users}
        write_private(self.path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
        with self._cache_lock:
            self._stamp = None  # re-read now, from what was written
            self._refresh_locked()

    # -- operations ------------------------------------------------------------------------
    def add(self, name: str, password: str, role: Role | str) -> User:
        _check_name(name)
        checked_role = _role(name, role)
        _check_password(name, password)
        with self._locked():
            users = dict(self._refresh())
            if name in users:
                raise UserError(name, "already exists")
            users[name] = {"role": checked_role.value, "hash": self.hasher.hash(password)}
            self._save(users)
        log.info("users.added", user=name, role=checked_role.value)
        return User(name, checked_role)

    def set_password(self, name: str, password: str) -> None:
        _check_password(name, password)
        with self._locked():
            users = dict(self._refresh())
            if name not in users:
                raise UserError(name, "no such user")
            users[name] = {**users[name], "hash": self.hasher.hash(password)}
            self._save(users)
        log.info("users.password_changed", user=name)

    def set_role(self, name: str, role: Role | str) -> User:
        checked_role = _role(name, role)
        with self._locked():
            users = dict(self._refresh())
            if name not in users:
                raise UserError(name, "no such user")
            users[name] = {**users[name], "role": checked_role.value}
            self._save(users)
        log.info("users.role_changed", user=name, role=checked_role.value)
        return User(name, checked_role)

    def remove(self, name: str) -> None:
        with self._locked():
            users = dict(self._refresh())
            if users.pop(name, None) is None:
                raise UserError(name, "no such user")
            self._save(users)
        log.info("users.removed", user=name)

    def get(self, name: str) -> User | None:
        record = self._refresh().get(name)
        if record is None:
            return None
        try:
            return User(name, Role(record["role"]))
        except (KeyError, ValueError):
            log.warning("users.bad_record", user=name)
            return None

    def list(self) -> list[User]:
        return [u for name in sorted(self._refresh()) if (u := self.get(name)) is not None]

    def credential_stamp(self, name: str) -> str | None:
        """Changes whenever the user's password hash does: tokens issued before go stale."""
        record = self._refresh().get(name)
        if record is None:
            return None
        return hashlib.sha256(record.get("hash", "").encode()).hexdigest()[:16]

    def verify(self, name: str, password: str) -> User | None:
        """The user if the password is right, else None (never says which part was wrong)."""
        record = self._refresh().get(name) if isinstance(name, str) else None
        stored = record.get("hash") if record is not None else None
        if record is None or stored is None or len(password) > MAX_PASSWORD:
            # Spend the same work as a real check: no timing hint that the name is unknown.
            with contextlib.suppress(VerificationError, InvalidHashError):
                self.hasher.verify(self._dummy_hash(), password[:MAX_PASSWORD])
            return None
        try:
            self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        user = self.get(name)
        if user is not None and self.hasher.check_needs_rehash(stored):
            self._rehash(name, stored, password)
        return user

    def _rehash(self, name: str, old: str, password: str) -> None:
        with self._locked():
            users = dict(self._refresh())
            # Only if nobody changed the password meanwhile.
            if name in users and users[name].get("hash") == old:
                users[name] = {**users[name], "hash": self.hasher.hash(password)}
                self._save(users)
                log.info("users.rehashed", user=name)


# ------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class TokenGrant:
    name: str
    stamp: str
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenIssuer:
    """Bearer tokens: random, stored only as SHA-256, with an expiry.

    With `path`, the grants are kept in a 0600 JSON file too, so a service restart does not log
    everyone out; the file holds digests, never usable tokens."""

    def __init__(
        self,
        users: UserStore,
        ttl_s: float = DEFAULT_TOKEN_TTL_S,
        *,
        clock: Clock = time.time,
        path: Path | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"token ttl must be positive, got {ttl_s}")
        self.users = users
        self.ttl_s = ttl_s
        self.clock = clock
        self.path = path
        # The API issues tokens in a worker thread (the file write) and resolves them on the
        # event loop: one lock keeps the grants consistent.
        self._lock = threading.RLock()
        self._grants: dict[str, TokenGrant] = self._load()

    def _load(self) -> dict[str, TokenGrant]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: TokenGrant(**v) for k, v in raw.items()}
        except (OSError, ValueError, TypeError) as exc:
            # Losing the grants only logs people out: not worth refusing to start over.
            log.warning("tokens.unreadable", path=str(self.path), error=str(exc))
            return {}

    def _persist(self) -> None:
        if self.path is None:
            return
        doc = {k: {"name": g.name, "stamp": g.stamp, "expires_at": g.expires_at}
               for k, g in self._grants.items()}
        write_private(self.path, json.dumps(doc, sort_keys=True))

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, g in self._grants.items() if g.expires_at <= now]:
            del self._grants[key]

    def issue(self, user: User) -> str:
        stamp = self.users.credential_stamp(user.name)
        if stamp is None:
            raise UserError(user.name, "no such user")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._prune()
            self._grants[_digest(token)] = TokenGrant(user.name, stamp,
                                                      self.clock() + self.ttl_s)
            self._persist()
        return token

    def expires_at(self, token: str) -> float | None:
        with self._lock:
            grant = self._grants.get(_digest(token))
        return None if grant is None else grant.expires_at

    def resolve(self, token: str) -> User | None:
        """The token's user with their current role; None if expired, revoked, unknown, the
        user removed or their password changed since it was issued."""
        with self._lock:
            grant = self._grants.get(_digest(token))
        if grant is None:
            return None
        if grant.expires_at <= self.clock():
            self.revoke(token)
            return None
        user = self.users.get(grant.name)
        if user is None or self.users.credential_stamp(grant.name) != grant.stamp:
            self.revoke(token)
            return None
        return user

    def revoke(self, token: str) -> bool:
        with self._lock:
            found = self._grants.pop(_digest(token), None) is not None
            if found:
                self._persist()
        return found

    def revoke_user(self, name: str) -> int:
        with self._lock:
            keys = [k for k, g in self._grants.items() if g.name == name]
            for key in keys:
                del self._grants[key]
            if keys:
                self._persist()
        return len(keys)
