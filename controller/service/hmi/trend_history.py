"""The trends' last minutes from the run's records, so that a page opened mid-run shows them at
once instead of only what its live feed has brought since. Only the values the trends draw go
to the browser (RF power, each gas's mass flow, the gauge), read on a worker thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from controller.records.reader import RecordsReader
from controller.records.schema import RecordsUnavailable

TREND_WINDOW_S = 600.0  # the trends' span: the last ten minutes


def _trend_values(sample: dict[str, Any]) -> dict[str, Any]:
    rf = sample.get("rf") or {}
    gauge = sample.get("gauge") or {}
    return {
        "rf": {"forward_kw": rf.get("forward_kw"), "reflected_kw": rf.get("reflected_kw")},
        "mfcs": {name: {"mass_slpm": (reading or {}).get("mass_slpm")}
                 for name, reading in (sample.get("mfcs") or {}).items()},
        "gauge": {"valid": gauge.get("valid", False), "diameter_mm": gauge.get("diameter_mm")},
    }


def trend_history(records_path: Path, run_id: int,
                  now: float | None = None) -> list[dict[str, Any]]:
    """The run's recorded samples of the last ``TREND_WINDOW_S``, oldest first, each as
    ``{"t": wall time, **values}``; none when the records cannot be read."""
    since = (time.time() if now is None else now) - TREND_WINDOW_S
    try:
        samples = RecordsReader(records_path).telemetry(run_id, since_t=since)
    except RecordsUnavailable:
        return []
    return [{"t": t, **_trend_values(sample)} for t, sample in samples]
