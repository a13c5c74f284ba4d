"""A run's report as one self-contained HTML page: it opens offline and prints on A4. uPlot
(vendored), the page's own CSS and script are inlined from the package's static assets, and
the plots' data sits in a ``<script type="application/json">`` block. The same page is the
HMI's run page (``GET /api/runs/{id}/report.html``) and ``povd runs report ID --html FILE``.

Printing to PDF is the browser's (Print, then Save as PDF): the plots are drawn by script, so a
server-side PDF would need a browser engine, which the line PC does not carry."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from html import escape
from importlib.resources import files
from typing import Any

from controller.records.layer_report import layer_reports
from controller.records.schema import RunDetail
from controller.service.reports import html_sections as sections
from controller.service.reports.plot_data import Sample, plot_data
from controller.service.reports.summary import when

DATA_ELEMENT_ID = "report-data"

# Where the inlined assets live, inside the package (pyproject ships static/**/* with it).
_UPLOT = ("static", "vendor", "uplot")
_REPORT = ("static", "report")


@cache
def asset(*path: str) -> str:
    """A static asset's text; refused if it could end the element it is inlined into."""
    content = files("controller.service").joinpath(*path).read_text(encoding="utf-8")
    if re.search(r"</(script|style)", content, re.IGNORECASE):
        raise ValueError(f"{'/'.join(path)} cannot be inlined: it holds a closing tag")
    return content


def json_for_script(value: Any) -> str:
    """JSON that can sit inside a <script> element: '<', '>' and '&' as \\u escapes, so a
    recorded text holding '</script>' or '<!--' cannot end or confuse the block; JSON reads the
    escapes back as the same characters. No NaN (not JSON)."""
    encoded = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return encoded.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def report_html(detail: RunDetail, samples: Sequence[Sample], *, generated_at: float) -> str:
    """The page for a run: its records (``detail``) and its recorded telemetry (``samples``)."""
    r = detail.run
    plots = plot_data(samples, detail.passes)
    data = {"run": r.id, "recipe": r.recipe_name, "serial": r.preform_serial,
            **plots.to_json()}
    figures = "".join(sections.plot_figure(p) for p in plots.plots)
    title = f"Run {r.id}: {r.recipe_name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{asset(*_UPLOT, "uPlot.min.css")}</style>
<style>{asset(*_REPORT, "report.css")}</style>
</head>
<body>
<header>
<h1>{escape(title)}</h1>
<p class="generated">Run report generated {escape(when(generated_at))}; serial
{sections.text(r.preform_serial)}.</p>
</header>
<section id="summary"><h2>Summary</h2>{sections.facts(detail)}</section>
<section id="timeline"><h2>State timeline</h2>{sections.timeline(detail)}</section>
<section id="alarms"><h2>Alarms</h2>{sections.alarms(detail.alarms)}</section>
<section id="commands"><h2>Operator commands</h2>{sections.commands(detail)}</section>
<section id="plots"><h2>Plots</h2>
<noscript><p class="note">The plots need JavaScript; the CSV export has their data.</p></noscript>
{sections.plot_note(data)}{figures}</section>
<section id="layers"><h2>Layers</h2>{sections.layers(layer_reports(detail.passes))}</section>
<section id="passes"><h2>Passes</h2>{sections.passes(detail)}</section>
<section id="recipe"><h2>Recipe</h2>{sections.recipe(detail)}</section>
<script type="application/json" id="{DATA_ELEMENT_ID}">{json_for_script(data)}</script>
<script type="text/plain" id="uplot-licence">uPlot 1.6.32 (inlined below)
{asset(*_UPLOT, "LICENSE")}</script>
<script>{asset(*_UPLOT, "uPlot.iife.min.js")}</script>
<script>{asset(*_REPORT, "report.js")}</script>
</body>
</html>
"""

