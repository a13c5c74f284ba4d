"""A run's report over HTTP (issue 10), for whoever may read the runs (as ``/api/runs/{id}``):

- ``GET /api/runs/{run_id}/report.html``: the self-contained printable report, the HMI's run
  page (a policy header holds it to its inlined assets: it loads nothing from anywhere);
- ``GET /api/runs/{run_id}/samples.csv`` and ``/passes.csv``: the CSV export.

Reading and rendering run in a worker thread: a long run's samples take a while, and the event
loop serves the safety cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import HTMLResponse, Response

from controller.records.reader import RecordsReader
from controller.records.report_csv import (
    passes_csv,
    passes_filename,
    samples_csv,
    samples_filename,
)
from controller.records.schema import RecordsUnavailable, RunDetail
from controller.service.api_access import ApiContext, Ctx, Reader
from controller.service.api_models import UNAUTHORIZED, ErrorReply
from controller.service.reports.html_page import report_html

T = TypeVar("T")

# The report inlines its scripts and styles and fetches nothing: say so to the browser, so a
# page that tried would be stopped (and an HMI may frame it, from its own origin only).
REPORT_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                 "img-src data:; frame-ancestors 'self'")

reports = APIRouter(prefix="/api/runs", tags=["reports"],
                    responses={**UNAUTHORIZED, 404: {"model": ErrorReply}})


def _reader(ctx: ApiContext) -> RecordsReader:
    if ctx.records_path is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no run records configured")
    return RecordsReader(ctx.records_path)


async def _read(ctx: ApiContext, run_id: int, make: Callable[[RecordsReader, RunDetail], T]) -> T:
    """``make`` from the run's records, in a worker thread; 404 for a run not recorded."""
    reader = _reader(ctx)

    def work() -> T | None:
        detail = reader.get_run(run_id)
        return None if detail is None else make(reader, detail)

    try:
        result = await asyncio.to_thread(work)
    except RecordsUnavailable:
        result = None  # no records file yet: no run either
    if result is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    return result


def _csv(text: str, filename: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@reports.get("/{run_id}/report.html", response_class=HTMLResponse)
async def run_report_html(run_id: int, user: Reader, ctx: Ctx) -> HTMLResponse:
    page = await _read(ctx, run_id, lambda reader, detail: report_html(
        detail, reader.telemetry(run_id), generated_at=time.time()))
    return HTMLResponse(page, headers={"Content-Security-Policy": REPORT_POLICY})


@reports.get("/{run_id}/samples.csv", response_class=Response,
             responses={200: {"content": {"text/csv": {}}}})
async def run_samples_csv(run_id: int, user: Reader, ctx: Ctx) -> Response:
    text = await _read(ctx, run_id, lambda reader, detail: samples_csv(
        reader.telemetry(run_id), detail.run.started_at))
    return _csv(text, samples_filename(run_id))


@reports.get("/{run_id}/passes.csv", response_class=Response,
             responses={200: {"content": {"text/csv": {}}}})
async def run_passes_csv(run_id: int, user: Reader, ctx: Ctx) -> Response:
    text = await _read(ctx, run_id, lambda _reader, detail: passes_csv(detail.passes))
    return _csv(text, passes_filename(run_id))
