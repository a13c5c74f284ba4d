"""A run's report as plain data: what was made, how, and what happened on the way. The one
summary of a run that `povd runs report` prints (text or JSON) and the HTML report shows."""

from __future__ import annotations

import time
from typing import Any

from controller.records.layer_report import layer_reports
from controller.records.schema import AlarmRecord, RunDetail, to_plain


def when(t: float | None) -> str:
    """A record's time as the operator reads it (local time), or '-'."""
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def first_out(detail: RunDetail) -> AlarmRecord | None:
    """The alarm latched as the first-out cause of the run's trip, if any."""
    return next((a for a in detail.alarms if a.first_out), None)


def run_report(detail: RunDetail) -> dict[str, Any]:
    """A run's report: what was made, how, and what happened on the way."""
    r = detail.run
    passes = detail.passes
    diameters = [p.diameter_mm for p in passes if p.diameter_mm is not None]
    deposited = sum(p.deposited_g or 0.0 for p in passes)
    cause = first_out(detail)
    return {
        "run": r.id, "recipe": r.recipe_name, "recipe_sha256": r.recipe_hash,
        "line": r.line, "machine": r.machine, "operator": r.operator,
        "preform_serial": r.preform_serial, "bait_rod_lot": r.bait_rod_lot,
        "precursor_lot": r.precursor_lot,
        "started": when(r.started_at), "ended": when(r.ended_at),
        "duration_s": None if r.ended_at is None else round(r.ended_at - r.started_at, 1),
        "outcome": r.outcome.value if r.outcome else "interrupted",
        "first_out": cause.alarm_id if cause else None,
        "passes": len(passes),
        "final_diameter_mm": diameters[-1] if diameters else None,
        "deposited_g": round(deposited, 2),
        "alarms_raised": sorted({a.alarm_id for a in detail.alarms if a.action == "activate"}),
        "operator_commands": [
            {"t": when(c.t), "user": c.user, "command": c.command, "accepted": c.accepted,
             "reason": c.reason}
            for c in detail.commands
        ],
        "states": [f"{s.from_state} -> {s.to_state}" for s in detail.states],
        "pass_table": [
            {"layer": p.layer, "pass": p.pass_index, "diameter_mm": p.diameter_mm,
             "deposited_g": p.deposited_g, "duration_s": p.duration_s}
            for p in passes
        ],
        "layers": to_plain(layer_reports(passes)),
    }
