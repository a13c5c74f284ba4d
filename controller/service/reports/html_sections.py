"""The report page's sections as HTML, rendered here rather than in the browser so that the
facts (the recipe's hash, the serial, the outcome, every alarm and pass) read and print even
where scripts do not run. Every recorded text is escaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from controller.records.layer_report import LayerReport
from controller.records.schema import AlarmRecord, RunDetail, StateRecord
from controller.service.reports.plot_data import Plot, planned_diameter_mm
from controller.service.reports.summary import first_out, run_report, when

Cell = str | int | float | None


def text(value: Cell) -> str:
    return "-" if value is None or value == "" else escape(str(value))


def num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """A table whose cells are already HTML (each made by ``text`` or ``num``)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(detail: RunDetail) -> str:
    """Who made which preform, with which recipe, and how the run ended."""
    summary = run_report(detail)
    r = detail.run
    cause = first_out(detail)
    cause_html = ("none" if cause is None else
                  f"<strong>{text(cause.alarm_id)}</strong>: {text(cause.message)} "
                  f"({text(when(cause.t))})")
    rows = [
        ("Recipe", f"{text(r.recipe_name)}"),
        ("Recipe SHA-256", f'<code class="hash">{text(r.recipe_hash)}</code>'),
        ("Line / machine", f"{text(r.line)} / {text(r.machine)}"),
        ("Operator", text(r.operator)),
        ("Preform serial", f'<span class="serial">{text(r.preform_serial)}</span>'),
        ("Bait rod lot", text(r.bait_rod_lot)),
        ("Precursor lot", text(r.precursor_lot)),
        ("Started", text(summary["started"])),
        ("Ended", text(summary["ended"])),
        ("Duration", text(_duration(summary["duration_s"]))),
        ("Outcome", f'<strong class="outcome">{text(summary["outcome"])}</strong>'),
        ("First-out cause", cause_html),
        ("Passes", text(summary["passes"])),
        ("Final diameter", f"{num(summary['final_diameter_mm'], '.3f')} mm"),
        ("Glass deposited", f"{num(summary['deposited_g'], '.2f')} g"),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="facts"><tbody>{body}</tbody></table>'


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    whole = round(seconds)
    return f"{whole // 3600:d} h {whole % 3600 // 60:02d} min {whole % 60:02d} s"


# The timeline strip's colours by PackML state, by what the state means to the operator.
_STATE_COLOURS = {
    "Execute": "#2e7d32", "Starting": "#81c784", "Completing": "#81c784", "Complete": "#a5d6a7",
    "Held": "#f9a825", "Holding": "#fbc02d", "Unholding": "#fdd835",
    "Suspended": "#ef6c00", "Suspending": "#fb8c00", "Unsuspending": "#ffa726",
    "Aborting": "#c62828", "Aborted": "#e53935", "Stopping": "#6d4c41", "Stopped": "#8d6e63",
}
_WIDTH = 1000  # the strip's viewBox width; it scales to the page


def timeline(detail: RunDetail) -> str:
    """The run's states over time as a strip (one band per state, its width its duration),
    then every change in a table."""
    states = detail.states
    if not states:
        return "<p>No state changes recorded.</p>"
    return _strip(states, detail.run.ended_at) + table(
        ["time", "from", "to", "reason"],
        ([text(when(s.t)), text(s.from_state), text(s.to_state), text(s.reason)]
         for s in states),
        "timeline",
    )


def _strip(states: Sequence[StateRecord], ended_at: float | None) -> str:
    start = states[0].t
    end = max(ended_at or states[-1].t, states[-1].t)
    span = max(end - start, 1e-9)
    bands = []
    for state, following in zip(states, [*states[1:], None], strict=True):
        until = following.t if following is not None else end
        x = (state.t - start) / span * _WIDTH
        width = max((until - state.t) / span * _WIDTH, 1.0)
        colour = _STATE_COLOURS.get(state.to_state, "#9e9e9e")
        label = escape(state.to_state)
        bands.append(f'<rect x="{x:.1f}" y="0" width="{width:.1f}" height="28" '
                     f'fill="{colour}"><title>{label} from {escape(when(state.t))}</title></rect>')
        if width > 60:  # a label only where it fits
            bands.append(f'<text x="{x + 4:.1f}" y="19">{label}</text>')
    return (f'<svg class="strip" viewBox="0 0 {_WIDTH} 28" preserveAspectRatio="none" '
            f'role="img" aria-label="states over time">{"".join(bands)}</svg>')


def alarms(records: Sequence[AlarmRecord]) -> str:
    if not records:
        return "<p>No alarms.</p>"
    return table(
        ["time", "alarm", "action", "to", "priority", "message", "value", "user", "first out"],
        ([text(when(a.t)), text(a.alarm_id), text(a.action), text(a.to_state),
          text(a.priority), text(a.message), text(a.value), text(a.user),
          "<strong>first out</strong>" if a.first_out else ""] for a in records),
        "alarms",
    )


def commands(detail: RunDetail) -> str:
    if not detail.commands:
        return "<p>No operator commands recorded.</p>"
    return table(
        ["time", "user", "command", "answer"],
        ([text(when(c.t)), text(c.user), text(c.command),
          "accepted" if c.accepted else f"refused: {text(c.reason)}"] for c in detail.commands),
        "commands",
    )


def layers(reports: Sequence[LayerReport]) -> str:
    if not reports:
        return "<p>No layers: no pass was recorded.</p>"
    return table(
        ["layer", "passes run / planned + extra", "boundary planned mm", "measured mm", "source",
         "error mm", "error %", "thickness planned mm", "measured mm", "error %",
         "SiCl4 scale (mean)", "traverse mm/min", "limited", "composition error % (mean)"],
        ([text(x.name) + ("" if x.complete else " *"),
          f"{x.passes} / {num(x.planned_passes, 'd')} + {x.extra_passes}",
          num(x.planned_boundary_mm, ".3f"), num(x.measured_boundary_mm, ".3f"),
          text(x.boundary_source), num(x.boundary_error_mm, "+.3f"),
          num(x.boundary_error_pct, "+.2f"), num(x.planned_thickness_mm, ".3f"),
          num(x.measured_thickness_mm, ".3f"), num(x.thickness_error_pct, "+.2f"),
          num(x.sicl4_scale.mean if x.sicl4_scale else None, ".3f"),
          "-" if x.traverse_mm_min is None else
          f"{x.traverse_mm_min.low:.1f}-{x.traverse_mm_min.high:.1f}",
          f"{x.limited_passes}/{x.passes}", num(x.composition_error_mean_pct, "+.2f")]
         for x in reports),
        "layers",
    ) + ("<p class=\"note\">* the layer did not run all its passes</p>"
         if any(not x.complete for x in reports) else "")


def passes(detail: RunDetail) -> str:
    if not detail.passes:
        return "<p>No passes recorded.</p>"
    return table(
        ["pass", "layer", "layer pass", "diameter mm", "plan mm", "source", "glass g", "time s",
         "SiCl4 g/min", "SiCl4 scale", "traverse mm/min", "limited"],
        ([text(p.pass_index), text(p.layer_name or p.layer), text(p.layer_pass),
          num(p.diameter_mm, ".3f"), num(planned_diameter_mm(p), ".3f"),
          text(p.diameter_source), num(p.deposited_g, ".2f"), num(p.duration_s, ".1f"),
          num(p.sicl4_g_min, ".2f"), num(p.sicl4_scale, ".3f"), num(p.traverse_mm_min, ".1f"),
          "" if p.limited is None else ("yes" if p.limited else "no")]
         for p in detail.passes),
        "passes",
    )


def plot_figure(plot: Plot) -> str:
    title = f"{escape(plot.title)} ({escape(plot.unit)})"
    if plot.empty:
        return (f'<figure class="plot empty"><figcaption>{title}</figcaption>'
                f"<p>No data recorded.</p></figure>")
    return (f'<figure class="plot"><figcaption>{title}</figcaption>'
            f'<div class="chart" id="plot-{escape(plot.key)}"></div></figure>')


def recipe(detail: RunDetail) -> str:
    return (f'<p>SHA-256 <code class="hash">{text(detail.run.recipe_hash)}</code></p>'
            f'<pre class="recipe">{escape(detail.recipe_text)}</pre>')


def plot_note(data: dict[str, Any]) -> str:
    stride, samples = data["stride"], data["samples"]
    if stride == 1:
        return f"<p class=\"note\">{samples} samples recorded.</p>"
    return (f"<p class=\"note\">{samples} samples recorded; the plots show every {stride}th "
            f"(the samples CSV has them all).</p>")
