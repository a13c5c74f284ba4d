"""The printable run report (issue 10) over HTTP, from real records: the page is one
self-contained, well-formed HTML file (nothing fetched from outside, the data block's JSON
round-trips even with a recipe name that would end a <script>), it carries the facts (the
recipe's hash, the serial, the outcome and first-out cause, every pass), and the CSV routes
serve the export; every route needs a reader's login, as /api/runs/{id} does."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from controller.records.reader import RecordsReader
from controller.records.report_csv import PASS_COLUMNS
from controller.records.schema import RunDetail
from controller.service.reports.html_page import DATA_ELEMENT_ID, asset
from controller.service.reports.plot_data import plot_data
from controller.service.roles import Role
from tests.integration.test_api import Api, Clock, FakeService, make_app
from tests.recorded_run import PASSES, RECIPE_NAME, RECIPE_TEXT, SAMPLES, SERIAL, record_run

VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr", "source"}
# SVG's drawing elements close themselves in our strip only when written <x/>; ours are paired.


@dataclass
class Page(HTMLParser):
    """What a check needs of a page: its scripts, the text of each table by class, every
    attribute that can point somewhere, and whether every element closed in order."""

    scripts: list[tuple[dict[str, str | None], str]] = field(default_factory=list)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    text: list[str] = field(default_factory=list)
    unbalanced: list[str] = field(default_factory=list)
    _stack: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.links += [v or "" for k, v in attrs if k in {"src", "href", "action", "srcset"}]
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag in VOID:
            return
        self._stack.append((tag, values))
        if tag == "table":
            self.tables.setdefault(values.get("class") or "", [])
        elif tag == "tr" and self._table() is not None:
            self.tables[self._table() or ""].append([])
        elif tag in {"td", "th"} and self._table() is not None:
            rows = self.tables[self._table() or ""]
            if rows:
                rows[-1].append("")
        elif tag == "script":
            self.scripts.append((values, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self._stack or self._stack[-1][0] != tag:
            self.unbalanced.append(tag)
            return
        self._stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._stack and self._stack[-1][0] == "script":
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)
        elif self._in_cell():
            rows = self.tables[self._table() or ""]
            if rows and rows[-1]:
                rows[-1][-1] = (rows[-1][-1] + data).strip()

    def _in_cell(self) -> bool:
        for tag, _attrs in reversed(self._stack):
            if tag in {"td", "th"}:
                return True
            if tag == "table":
                return False
        return False

    def _table(self) -> str | None:
        for tag, attrs in reversed(self._stack):
            if tag == "table":
                return attrs.get("class") or ""
        return None


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def check_report(html: str, detail: RunDetail, samples: list[tuple[float, dict[str, object]]]
                 ) -> Page:
    """The checks every report passes, whatever the run."""
    page = parse(html)
    assert not page.unbalanced and not page._stack, (page.unbalanced, page._stack)
    # Self-contained: no element points anywhere, no script is fetched, no style imports; the
    # only address in the file is the licence banner inside the vendored uPlot itself.
    assert page.links == []
    assert all("src" not in attrs for attrs, _ in page.scripts)
    rest = html.replace(asset("static", "vendor", "uplot", "uPlot.iife.min.js"), "")
    assert "http://" not in rest and "https://" not in rest
    assert "@import" not in html and "url(" not in rest
    # The data block round-trips: what was computed is what the page's script reads.
    (block,) = [body for attrs, body in page.scripts
                if attrs.get("type") == "application/json" and attrs.get("id") == DATA_ELEMENT_ID]
    data = json.loads(block)
    expected = plot_data(samples, detail.passes).to_json()
    assert {k: data[k] for k in expected} == json.loads(json.dumps(expected))
    assert (data["run"], data["recipe"], data["serial"]) == (
        detail.run.id, detail.run.recipe_name, detail.run.preform_serial)
    # The facts.
    facts = {row[0]: row[1] for row in page.tables["facts"]}
    assert facts["Recipe SHA-256"] == detail.run.recipe_hash
    assert facts["Preform serial"] == (detail.run.preform_serial or "-")
    assert facts["Operator"] == detail.run.operator
    assert facts["Outcome"] == (detail.run.outcome.value if detail.run.outcome else "interrupted")
    # Every pass, in order, with its measured diameter.
    rows = page.tables["passes"][1:]  # after the header
    assert [int(r[0]) for r in rows] == [p.pass_index for p in detail.passes]
    assert [r[3] for r in rows] == [f"{p.diameter_mm:.3f}" for p in detail.passes]
    for plot in expected["plots"]:
        has_data = any(v is not None for s in plot["series"] for v in s["values"])
        assert (f"plot-{plot['key']}" in page.ids) is has_data, plot["key"]
    return page


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Api, int]]:
    db = tmp_path / "records.sqlite3"
    run_id = await record_run(db)
    service, clock = FakeService(), Clock()
    app, audit = make_app(tmp_path, service, clock, records_path=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://povd") as http:
        yield Api(http, service, audit, clock), run_id
    audit.close()


async def test_the_report_page_is_self_contained_and_carries_the_run(
        api: tuple[Api, int], tmp_path: Path) -> None:
    client, run_id = api
    reply = await client.as_(Role.VIEWER, "GET", f"/api/runs/{run_id}/report.html")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    reader = RecordsReader(tmp_path / "records.sqlite3")
    detail = reader.get_run(run_id)
    assert detail is not None
    samples = reader.telemetry(run_id)
    assert len(samples) == SAMPLES
    page = check_report(reply.text, detail, samples)
    assert detail.run.recipe_name == RECIPE_NAME  # holds '</script><!--': escaped everywhere
    assert RECIPE_TEXT in "".join(page.text)  # the recipe, shown as text, not run
    facts = {row[0]: row[1] for row in page.tables["facts"]}
    assert facts["Preform serial"] == SERIAL
    assert facts["First-out cause"].startswith("TRIP-WATER")
    assert facts["Outcome"] == "aborted"
    assert [r[1] for r in page.tables["alarms"][1:]] == ["TRIP-WATER"]
    assert [r[2] for r in page.tables["timeline"][1:]] == [
        "Starting", "Execute", "Aborting", "Aborted"]
    assert [(r[0], r[1]) for r in page.tables["layers"][1:]] == [
        ("base", "3 / 3 + 0"), ("doped", "3 / 3 + 0")]
    assert len(page.tables["passes"]) == 1 + len(PASSES)


async def test_the_csv_routes_serve_the_samples_and_the_passes(api: tuple[Api, int]) -> None:
    client, run_id = api
    samples = await client.as_(Role.VIEWER, "GET", f"/api/runs/{run_id}/samples.csv")
    assert samples.status_code == 200
    assert samples.headers["content-type"].startswith("text/csv")
    assert f"run-{run_id}-samples.csv" in samples.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(samples.text)))
    assert len(rows) == SAMPLES and "rf.forward_kw" in rows[0]
    passes = await client.as_(Role.VIEWER, "GET", f"/api/runs/{run_id}/passes.csv")
    assert passes.status_code == 200
    table = list(csv.reader(io.StringIO(passes.text)))
    assert table[0] == list(PASS_COLUMNS)
    assert [float(r[2]) for r in table[1:]] == [p.diameter_mm for p in PASSES]


@pytest.mark.parametrize("route", ["report.html", "samples.csv", "passes.csv"])
async def test_the_routes_need_a_login_and_a_recorded_run(
        api: tuple[Api, int], route: str) -> None:
    client, run_id = api
    anonymous = await client.http.get(f"/api/runs/{run_id}/{route}")
    assert anonymous.status_code == 401
    missing = await client.as_(Role.VIEWER, "GET", f"/api/runs/{run_id + 1}/{route}")
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"no run {run_id + 1}"}
