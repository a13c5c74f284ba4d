"""The controller's local HTTP API (FastAPI): every operator action is a call here.

Served on loopback by `povd serve`; the OpenAPI document is at /openapi.json (/docs renders it).

Authentication: POST /api/login returns a bearer token; every other endpoint needs
``Authorization: Bearer <token>`` (401 without a valid, unexpired one), or the HMI's session
cookie with its CSRF header on commands (`controller.service.hmi`). A failed login says 401 and
never which part was wrong. The operator HMI is served at / (its routes under /hmi/).

Commands: POST /api/commands/{command} with ``{"args": {...}, "reason": "..."}``. The service
checks the role and keeps the audit trail (its gate, `controller.service.gate`, the same for
every channel); here its reply only becomes a status code. The body is always a CommandReply:
- 200: accepted;
- 403: refused for the user's role;
- 404: not a command the service executes (unknown, or a read with its own endpoint);
- 409: refused by the controller (state, mode, interlock): a valid answer, with its reason.
A given `reason` is passed to the service as ``args["reason"]`` unless args has one already.

Audit: every login (success or failure) and logout is appended to the audit trail here; every
command and refusal by the service's gate, durably, before the reply is sent; if the trail
cannot be written the reply is 503.

Reads: GET /api/status, /api/alarms, /api/events?since=N, /api/runs, /api/runs/{id},
/api/whoami; POST /api/recipes/validate {text} returns the forecast or every error."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from controller.config.line import LineConfig
from controller.recipes.forecast import forecast
from controller.recipes.parse_worker import parse_recipe_off_loop
from controller.recipes.planning import plan_from_recipe
from controller.recipes.recipe import Recipe, RecipeError
from controller.records.audit import AuditError, AuditTrail
from controller.records.reader import RecordsReader
from controller.records.schema import RecordsUnavailable, to_plain
from controller.service.api_access import (
    ApiContext,
    Ctx,
    CurrentCaller,
    CurrentUser,
    Reader,
    Validator,
    log_in,
    log_out,
)
from controller.service.api_models import (
    COMMAND_RESPONSES,
    LOGIN_RESPONSES,
    UNAUTHORIZED,
    CommandReplyModel,
    CommandRequest,
    ErrorReply,
    EventModel,
    LoginReply,
    LoginRequest,
    OkReply,
    RecipeIssueModel,
    ValidateReply,
    ValidateRequest,
    WhoAmI,
)
from controller.service.hmi import routes as hmi_routes
from controller.service.hmi.sessions import BrowserSessions
from controller.service.hmi.settings import HmiSettings
from controller.service.protocol import ControllerService
from controller.service.report_routes import reports as run_reports
from controller.service.roles import SERVICE_COMMANDS
from controller.service.users import TokenIssuer, UserStore

log = structlog.get_logger(__name__)


def package_version() -> str:
    try:
        return version("povd")
    except PackageNotFoundError:
        return "0+unknown"


async def _audit_unavailable(request: Request, exc: Exception) -> JSONResponse:
    detail = exc.detail if isinstance(exc, AuditError) else str(exc)
    log.error("api.audit_unavailable", path=request.url.path, error=str(exc))
    return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        content={"detail": f"audit trail unavailable: {detail}"})


# --------------------------------------------------------------------------------------------
# Sessions

sessions = APIRouter(prefix="/api", tags=["sessions"])


@sessions.post("/login", responses=LOGIN_RESPONSES)
async def login(body: LoginRequest, ctx: Ctx, request: Request) -> LoginReply:
    client = request.client.host if request.client else None
    user, token = await log_in(ctx, body.username, body.password, client=client)
    expires_at = ctx.tokens.expires_at(token)
    assert expires_at is not None
    return LoginReply(token=token, expires_at=expires_at, role=user.role.value,
                      username=user.name)


@sessions.post("/logout", responses=UNAUTHORIZED)
async def logout(caller: CurrentCaller, ctx: Ctx) -> OkReply:
    await log_out(ctx, caller)
    return OkReply()


@sessions.get("/whoami", responses=UNAUTHORIZED)
async def whoami(user: CurrentUser) -> WhoAmI:
    return WhoAmI(username=user.name, role=user.role.value)


# --------------------------------------------------------------------------------------------
# Reads

reads = APIRouter(prefix="/api", tags=["reads"], responses=UNAUTHORIZED)


@reads.get("/status")
async def get_status(user: Reader, ctx: Ctx) -> dict[str, Any]:
    return ctx.service.status()


@reads.get("/alarms")
async def get_alarms(user: Reader, ctx: Ctx) -> list[dict[str, Any]]:
    alarms: list[dict[str, Any]] = ctx.service.status().get("alarms", [])
    return alarms


@reads.get("/events")
async def get_events(
    user: Reader,
    ctx: Ctx,
    since: Annotated[int, Query(ge=0, description="events after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[EventModel]:
    events = await asyncio.to_thread(ctx.service.events_since, since, limit)
    return [EventModel(seq=e.seq, kind=e.kind, t=e.t, payload=e.payload) for e in events]


def _records(ctx: ApiContext) -> RecordsReader:
    if ctx.records_path is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no run records configured")
    return RecordsReader(ctx.records_path)


@reads.get("/runs")
async def list_runs(user: Reader, ctx: Ctx) -> list[dict[str, Any]]:
    reader = _records(ctx)
    try:
        runs = await asyncio.to_thread(reader.list_runs)
    except RecordsUnavailable:
        return []  # nothing recorded yet
    result: list[dict[str, Any]] = to_plain(runs)
    return result


@reads.get("/runs/{run_id}", responses={404: {"model": ErrorReply}})
async def get_run(run_id: int, user: Reader, ctx: Ctx) -> dict[str, Any]:
    reader = _records(ctx)
    try:
        detail = await asyncio.to_thread(reader.get_run, run_id)
    except RecordsUnavailable:
        detail = None
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    result: dict[str, Any] = to_plain(detail)
    return result


def _forecast(recipe: Recipe, efficiency: float, line: LineConfig) -> ValidateReply:
    prediction = forecast(plan_from_recipe(recipe, line), line, efficiency=efficiency)
    return ValidateReply(valid=True, forecast=prediction.to_json(), name=recipe.name,
                         sha256=recipe.sha256)


@reads.post("/recipes/validate")
async def validate(body: ValidateRequest, user: Validator, ctx: Ctx) -> ValidateReply:
    try:  # parsed in a worker process: no recipe holds the loop (or its GIL) while it reads
        recipe = await parse_recipe_off_loop(body.text, ctx.line)
    except RecipeError as exc:
        return ValidateReply(valid=False, errors=[
            RecipeIssueModel(field=i.field, reason=i.reason, line=i.line) for i in exc.errors
        ])
    return await asyncio.to_thread(_forecast, recipe, body.efficiency, ctx.line)


# --------------------------------------------------------------------------------------------
# Commands

commands = APIRouter(prefix="/api", tags=["commands"])


@commands.post(
    "/commands/{command}",
    responses=COMMAND_RESPONSES,
    description="Commands: " + ", ".join(sorted(SERVICE_COMMANDS)) + ".",
)
async def run_command(
    command: str, caller: CurrentCaller, ctx: Ctx, response: Response,
    body: Annotated[CommandRequest | None, Body()] = None,
) -> CommandReplyModel:
    body = body or CommandRequest()  # no body: no arguments (`curl -X POST .../hold`)
    args = dict(body.args)
    if body.reason is not None:
        args.setdefault("reason", body.reason)
    # The service checks the role and keeps the audit trail (its gate, for every channel);
    # here a refusal only becomes a status code.
    reply = await ctx.service.execute(caller.user.name, command, args, session=caller.session)
    if not reply.accepted:
        response.status_code = _REFUSAL_STATUS.get(reply.refused_by,
                                                   status.HTTP_409_CONFLICT)
    return CommandReplyModel.of(reply)


_REFUSAL_STATUS: dict[str | None, int] = {"unknown": status.HTTP_404_NOT_FOUND,
                                          "role": status.HTTP_403_FORBIDDEN}


# --------------------------------------------------------------------------------------------
# The app


def create_app(
    service: ControllerService,
    users: UserStore,
    tokens: TokenIssuer,
    audit: AuditTrail,
    line: LineConfig,
    *,
    records_path: Path | None = None,
    hmi: HmiSettings | None = None,
) -> FastAPI:
    """The API over one running controller (see the module docstring for the contract)."""
    app = FastAPI(title="povd", version=package_version(),
                  description=(__doc__ or "").split("\n\n", 1)[-1])
    hmi = hmi or HmiSettings()
    app.state.povd = ApiContext(
        service=service, users=users, tokens=tokens, audit=audit, line=line,
        records_path=records_path, browser=BrowserSessions(hmi.idle_logout_s),
    )
    app.state.hmi = hmi
    app.add_exception_handler(AuditError, _audit_unavailable)
    for router in (sessions, reads, commands, hmi_routes.router):
        app.include_router(router)
    app.include_router(run_reports)  # a run's report: HTML, CSV (issue 10)
    app.mount("/hmi/static", hmi_routes.static_files(), name="hmi-static")
    return app
