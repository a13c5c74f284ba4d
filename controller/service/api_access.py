"""Who is calling the HTTP API: the context the endpoints reach (``app.state.povd``), the
bearer token resolved to a user (401 without a valid one), the role a read needs (403), and
the non-secret name of the client session behind a token (a lease belongs to it)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from controller.config.line import LineConfig
from controller.records.audit import AuditTrail
from controller.service.protocol import ControllerService
from controller.service.roles import refusal
from controller.service.users import TokenIssuer, User, UserStore


@dataclasses.dataclass
class ApiContext:
    """What the endpoints reach through `app.state.povd`."""

    service: ControllerService
    users: UserStore
    tokens: TokenIssuer
    audit: AuditTrail
    line: LineConfig
    records_path: Path | None


def _context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.povd
    return ctx


Ctx = Annotated[ApiContext, Depends(_context)]
_bearer = HTTPBearer(auto_error=False, description="the token from POST /api/login")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail,
                         headers={"WWW-Authenticate": "Bearer"})


async def _current_user(ctx: Ctx, creds: Credentials) -> User:
    if creds is None or creds.scheme.lower() != "bearer":
        raise unauthorized("not logged in: POST /api/login for a token")
    user = ctx.tokens.resolve(creds.credentials)
    if user is None:
        raise unauthorized("token expired or revoked: log in again")
    return user


CurrentUser = Annotated[User, Depends(_current_user)]


def session_of(creds: HTTPAuthorizationCredentials | None) -> str | None:
    """A stable, non-secret name for the client session behind a token (rule 6: a lease
    belongs to the session that took it)."""
    if creds is None:
        return None
    return "http:" + hashlib.sha256(creds.credentials.encode()).hexdigest()[:16]


def _may(action: str) -> Callable[[User], Awaitable[User]]:
    async def check(user: CurrentUser) -> User:
        why = refusal(user.role, action)
        if why is not None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, why)
        return user

    return check


Reader = Annotated[User, Depends(_may("status"))]
Validator = Annotated[User, Depends(_may("validate"))]
