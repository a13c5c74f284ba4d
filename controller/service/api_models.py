"""The HTTP API's bodies and replies (the OpenAPI document is built from these), and the
error responses each route declares."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.service.protocol import CommandReply

MAX_NAME = 64
MAX_RECIPE_TEXT = 1_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Model):
    username: str = Field(min_length=1, max_length=MAX_NAME)
    password: str = Field(min_length=1, max_length=1024)


class LoginReply(_Model):
    token: str
    expires_at: float = Field(description="Unix time when the token stops working")
    role: str
    username: str


class WhoAmI(_Model):
    username: str
    role: str


class OkReply(_Model):
    ok: bool = True


class ErrorReply(_Model):
    detail: str


class CommandRequest(_Model):
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="the command's arguments, e.g. {'axis': 'carriage'}")
    reason: str | None = Field(default=None, max_length=1000,
                               description="why (recorded; required by some commands)")


class CommandReplyModel(_Model):
    command: str
    accepted: bool
    reason: str | None = None
    state: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, reply: CommandReply) -> CommandReplyModel:
        return cls(command=reply.command, accepted=reply.accepted, reason=reply.reason,
                   state=reply.state, data=dict(reply.data))


class EventModel(_Model):
    seq: int
    kind: str
    t: float
    payload: dict[str, Any]


class ValidateRequest(_Model):
    text: str = Field(max_length=MAX_RECIPE_TEXT, description="the recipe file's YAML text")
    efficiency: float = Field(default=0.5, gt=0, le=1,
                              description="deposition efficiency the forecast assumes")


class RecipeIssueModel(_Model):
    field: str
    reason: str
    line: int | None = None


class ValidateReply(_Model):
    valid: bool
    errors: list[RecipeIssueModel] = Field(default_factory=list)
    forecast: dict[str, Any] | None = None
    name: str | None = None
    sha256: str | None = None


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorReply, "description": "no valid token"},
}
LOGIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorReply, "description": "wrong user name or password"},
    429: {"model": ErrorReply, "description": "too many failed log-ins: see Retry-After"},
}
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    403: {"model": CommandReplyModel, "description": "refused for the user's role"},
    404: {"model": CommandReplyModel, "description": "not a command the service executes"},
    409: {"model": CommandReplyModel,
          "description": "refused by the controller: state, mode or interlock"},
    503: {"model": ErrorReply, "description": "the audit trail cannot be written"},
}
