"""The HMI's routes: its pages and static assets, the browser's login and logout (the session
cookie), the live feed, a run's plan and the shipped recipes. Commands and reads are the
HTTP API's own routes (``/api/...``), reached with the cookie and the CSRF header."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from controller.service.api_access import (
    Caller,
    Ctx,
    CurrentCaller,
    Reader,
    idle_reason,
    log_in,
    log_out,
)
from controller.service.api_models import LoginRequest, OkReply
from controller.service.hmi.line_view import line_view
from controller.service.hmi.live import LiveFeeds, live_feed
from controller.service.hmi.run_plan import run_plan
from controller.service.hmi.sessions import CSRF_HEADER, SESSION_COOKIE, csrf_token
from controller.service.hmi.settings import STATIC_DIR, HmiSettings
from controller.service.hmi.trend_history import trend_history

PAGES = {"/": "index.html", "/maintenance": "maintenance.html"}
# Pages and assets from this server only; uPlot sizes its canvas with inline styles.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["hmi"])


def _settings(request: Request) -> HmiSettings:
    settings: HmiSettings = request.app.state.hmi
    return settings


def _live_feeds(request: Request, ctx: Ctx) -> LiveFeeds:
    """The app's one LiveFeeds, made by the first feed: every browser's feed shares it."""
    feeds: LiveFeeds | None = getattr(request.app.state, "hmi_live", None)
    if feeds is None:
        feeds = request.app.state.hmi_live = LiveFeeds(ctx.service)
    return feeds


def _page(name: str) -> Any:
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / name, headers=_HEADERS)
    return page


for _path, _name in PAGES.items():
    router.add_api_route(_path, _page(_name), include_in_schema=False)


def _session_reply(caller: Caller, ctx: Ctx) -> dict[str, Any]:
    return {"username": caller.user.name, "role": caller.user.role.value,
            "csrf": csrf_token(caller.token), "csrf_header": CSRF_HEADER,
            "idle_logout_s": ctx.browser.idle_logout_s}


@router.post("/hmi/api/login")
async def login(body: LoginRequest, ctx: Ctx, request: Request,
                response: Response) -> dict[str, Any]:
    client = request.client.host if request.client else None
    user, token = await log_in(ctx, body.username, body.password, channel="hmi",
                               client=client)
    ctx.browser.touch(token)
    # A session cookie (no max-age): closing the browser ends it; the token's expiry and the
    # idle logout bound it too.
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/")
    return _session_reply(Caller(user, token, browser=True), ctx)


@router.post("/hmi/api/logout")
async def logout(caller: CurrentCaller, ctx: Ctx, response: Response) -> OkReply:
    await log_out(ctx, caller)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return OkReply()


@router.get("/hmi/api/session")
async def session(caller: CurrentCaller, ctx: Ctx) -> dict[str, Any]:
    """Who is logged in, and the CSRF token for this session (a reloaded page asks)."""
    return _session_reply(caller, ctx)


@router.post("/hmi/api/touch")
async def touch(caller: CurrentCaller) -> OkReply:
    """The operator is at the screen (input on the page): the idle time starts again (the
    CSRF-checked POST itself does it)."""
    return OkReply()


@router.get("/hmi/api/live")
async def live(caller: CurrentCaller, ctx: Ctx, request: Request) -> StreamingResponse:
    async def session_over() -> str | None:
        if ctx.tokens.resolve(caller.token) is None:
            return "the session has ended: log in again"
        if ctx.browser.idled_out(caller.token):
            why = idle_reason(ctx)
            await log_out(ctx, caller, why)
            return f"logged out: {why}"
        return None

    feed = live_feed(_live_feeds(request, ctx), caller.user, session_over)
    return StreamingResponse(
        feed, media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/hmi/api/runs/{run_id}/plan")
async def plan(run_id: int, user: Reader, ctx: Ctx) -> dict[str, Any]:
    if ctx.records_path is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no run records configured")
    view = await asyncio.to_thread(run_plan, ctx.records_path, run_id, ctx.line)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    return view


@router.get("/hmi/api/runs/{run_id}/trend")
async def trend(run_id: int, user: Reader, ctx: Ctx) -> list[dict[str, Any]]:
    """The trends' last ten minutes of a run, from its records."""
    if ctx.records_path is None:
        return []
    return await asyncio.to_thread(trend_history, ctx.records_path, run_id)


@router.get("/hmi/api/recipes")
async def recipes(user: Reader, request: Request) -> list[str]:
    """The shipped recipes' file names."""
    folder = _settings(request).recipes_dir
    return [] if folder is None else sorted(p.name for p in folder.glob("*.yaml"))


@router.get("/hmi/api/recipes/{name}")
async def recipe_text(name: Annotated[str, Path(pattern=r"^[\w.-]+\.yaml$")], user: Reader,
                      request: Request) -> dict[str, str]:
    folder = _settings(request).recipes_dir
    path = None if folder is None else folder / name
    if path is None or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shipped recipe {name}")
    return {"name": name, "text": await asyncio.to_thread(path.read_text)}


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


@router.get("/hmi/api/line")
async def line(user: Reader, ctx: Ctx) -> dict[str, Any]:
    return line_view(ctx.line)
