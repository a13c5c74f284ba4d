"""Who is calling the HTTP API: the context the endpoints reach (``app.state.povd``), the
caller resolved to a user (401 without a valid session), the role a read needs (403), and the
non-secret name of the client session (a lease belongs to it).

A caller presents its token one of two ways: ``Authorization: Bearer`` (the CLI, scripts), or
the HMI's HttpOnly session cookie (a browser; server-sent events cannot carry a header). A
cookie alone is something a browser sends on its own, so a cookie session's unsafe requests
must also carry the CSRF header (403 without it), and an idle cookie session is logged out
(``hmi.sessions``). Both are the same tokens, users, roles and audit."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from controller.config.line import LineConfig
from controller.records.audit import AuditTrail
from controller.service.hmi.sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    BrowserSessions,
    csrf_ok,
)
from controller.service.login_throttle import LoginThrottle
from controller.service.protocol import ControllerService
from controller.service.roles import refusal
from controller.service.users import TokenIssuer, User, UserStore

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PASSWORD_NICENESS = 10


def _below_the_safety_cycle() -> None:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PASSWORD_NICENESS)


# Password checks (argon2: memory-hard work on several threads, ~0.5 s of both cores here) run
# one at a time on one worker niced below the controller (its threads inherit the niceness): a
# burst of log-ins on a 2-core line PC starved the safety cycle into a PLC heartbeat loss.
_password_worker = ThreadPoolExecutor(1, thread_name_prefix="password-check",
                                      initializer=_below_the_safety_cycle)


@dataclasses.dataclass
class ApiContext:
    """What the endpoints reach through `app.state.povd`."""

    service: ControllerService
    users: UserStore
    tokens: TokenIssuer
    audit: AuditTrail
    line: LineConfig
    records_path: Path | None
    browser: BrowserSessions = dataclasses.field(default_factory=BrowserSessions)
    throttle: LoginThrottle = dataclasses.field(default_factory=LoginThrottle)


def _context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.povd
    return ctx


Ctx = Annotated[ApiContext, Depends(_context)]
_bearer = HTTPBearer(auto_error=False, description="the token from POST /api/login")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail,
                         headers={"WWW-Authenticate": "Bearer"})


def session_name(token: str) -> str:
    """A stable, non-secret name for the client session behind a token (rule 6: a lease
    belongs to the session that took it)."""
    return "http:" + hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Caller:
    user: User
    token: str
    browser: bool  # the HMI's cookie session, not a bearer token

    @property
    def session(self) -> str:
        return session_name(self.token)


async def log_in(ctx: ApiContext, username: str, password: str,
                 channel: str | None = None, client: str | None = None) -> tuple[User, str]:
    """Check the password and issue a token; every attempt audited. 401 never says which part
    was wrong; 429 while the name or the client address is locked out after repeated
    failures (``login_throttle``), without checking the password."""
    detail = {} if channel is None else {"channel": channel}
    keys = [f"user:{username}"] + ([f"client:{client}"] if client else [])
    wait = ctx.throttle.retry_after(keys)
    if wait is not None:
        await ctx.audit.append_async(username, "login", {**detail, "client": client},
                                     "refused", "too many failed log-ins")
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"too many failed log-ins: try again in {wait:.0f} s",
                            headers={"Retry-After": str(max(1, round(wait)))})
    user = await asyncio.get_running_loop().run_in_executor(
        _password_worker, ctx.users.verify, username, password)
    if user is None:
        ctx.throttle.failed(keys)
        await ctx.audit.append_async(username, "login", detail, "failed", "bad credentials")
        raise unauthorized("wrong user name or password")
    ctx.throttle.succeeded(keys)
    token = await asyncio.to_thread(ctx.tokens.issue, user)
    await ctx.audit.append_async(user.name, "login", {"role": user.role.value, **detail}, "ok")
    return user, token


async def log_out(ctx: ApiContext, caller: Caller, reason: str | None = None) -> None:
    """Revoke the caller's token (a browser's idle time with it), audited."""
    await asyncio.to_thread(ctx.tokens.revoke, caller.token)
    ctx.browser.close(caller.token)
    detail = {"channel": "hmi"} if caller.browser else {}
    await ctx.audit.append_async(caller.user.name, "logout", detail, "ok", reason)


def idle_reason(ctx: ApiContext) -> str:
    return f"idle for more than {ctx.browser.idle_logout_s / 60:g} min"


async def _caller(request: Request, ctx: Ctx, creds: Credentials) -> Caller:
    if creds is not None and creds.scheme.lower() == "bearer":
        token, browser = creds.credentials, False
    elif cookie := request.cookies.get(SESSION_COOKIE):
        token, browser = cookie, True
    else:
        raise unauthorized("not logged in: POST /api/login for a token")
    user = ctx.tokens.resolve(token)
    if user is None:
        raise unauthorized("token expired or revoked: log in again")
    caller = Caller(user, token, browser)
    if browser:
        unsafe = request.method not in SAFE_METHODS
        if unsafe and not csrf_ok(token, request.headers.get(CSRF_HEADER)):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"CSRF check failed: no valid {CSRF_HEADER} header")
        if ctx.browser.idled_out(token):
            why = idle_reason(ctx)
            await log_out(ctx, caller, why)
            raise unauthorized(f"logged out: {why}")
        if unsafe:
            ctx.browser.touch(token)
    return caller


CurrentCaller = Annotated[Caller, Depends(_caller)]


async def _current_user(caller: CurrentCaller) -> User:
    return caller.user


CurrentUser = Annotated[User, Depends(_current_user)]


def _may(action: str) -> Callable[[User], Awaitable[User]]:
    async def check(user: CurrentUser) -> User:
        why = refusal(user.role, action)
        if why is not None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, why)
        return user

    return check


Reader = Annotated[User, Depends(_may("status"))]
Validator = Annotated[User, Depends(_may("validate"))]
