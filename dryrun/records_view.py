"""What a dry run made, read back from its run records: the records minus their wall-clock
fields (two runs of one seed must give the same), and the product (passes, layer boundaries,
gas totals) to hold against a scaled run's.

Wall-clock fields are the record timestamps (``t``, ``alarm_time``, a run's or a pass's
``started_at`` / ``ended_at``), and in JSON payloads any key ending in ``_at`` or ``_wall``,
or named ``t``: under virtual time they are the virtual clock's readings from an epoch taken
from the real clock at start, the only thing that differs between two runs. Also left out: the
controller's claim on the safety I/O (``line_owner``), a random token by design, so that two
controllers on one line never look alike."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WALL_CLOCK_COLUMNS = frozenset({"t", "alarm_time", "started_at", "ended_at"})
IDENTITY_KEYS = frozenset({"line_owner"})  # the safety I/O claim: random by design
_TABLES = ("runs", "state_changes", "setpoints", "alarms", "commands", "passes", "checkpoints",
           "events", "telemetry")


def _is_wall_key(key: str) -> bool:
    return key in WALL_CLOCK_COLUMNS or key in IDENTITY_KEYS or key.endswith(("_at", "_wall"))


def _without_wall(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_wall(v) for k, v in value.items() if not _is_wall_key(k)}
    if isinstance(value, list):
        return [_without_wall(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return _without_wall(json.loads(value))
        except json.JSONDecodeError:
            return value
    return value


def records_without_wall_clock(db: Path) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows in order, wall-clock fields removed."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        result: dict[str, list[dict[str, Any]]] = {}
        for table in _TABLES:
            if table not in tables:
                continue
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()  # noqa: S608 - names from _TABLES
            result[table] = [
                {k: _cell(row[k]) for k in row.keys() if not _is_wall_key(k)}  # noqa: SIM118 - sqlite3.Row
                for row in rows
            ]
        return result
    finally:
        conn.close()


@dataclass(frozen=True)
class Product:
    passes: int
    final_diameter_mm: float
    layer_boundaries_mm: list[float]  # the diameter at each layer's last pass
    gas_totals_sl: dict[str, float]  # standard litres set per MFC over the run


def product_of(db: Path, run_id: int, time_scale: float) -> Product:
    """The preform and the gas a run made. Gas: each MFC's flow setpoints held for as long as
    they stood (process seconds: the record clock's seconds times the time scale), up to the
    run's end."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        passes = conn.execute(
            "SELECT layer, diameter_mm FROM passes WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
        ended = conn.execute("SELECT ended_at FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        setpoints = conn.execute(
            "SELECT t, device, value FROM setpoints WHERE run_id = ? AND device LIKE 'mfc_%' "
            "AND quantity = 'flow_slpm' ORDER BY id", (run_id,)
        ).fetchall()
    finally:
        conn.close()
    boundaries = [d for i, (layer, d) in enumerate(passes)
                  if i + 1 == len(passes) or passes[i + 1][0] != layer]
    totals: dict[str, float] = {}
    standing: dict[str, tuple[float, float]] = {}
    for t, device, value in [*setpoints, *[(ended, d, 0.0) for d in sorted(
            {s[1] for s in setpoints})]]:
        if device in standing:
            since, flow = standing[device]
            totals[device] = totals.get(device, 0.0) + flow * (t - since) * time_scale / 60.0
        standing[device] = (t, value)
    return Product(passes=len(passes), final_diameter_mm=passes[-1][1] if passes else 0.0,
                   layer_boundaries_mm=boundaries,
                   gas_totals_sl={k: round(v, 6) for k, v in sorted(totals.items())})
