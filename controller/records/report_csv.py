"""A run's recorded samples and passes as CSV (issue 10): what a spreadsheet or a script reads.
Pure: records in, text out; the CLI writes files of it, the HTTP API serves it.

Samples: one row per recorded telemetry sample, a column per value, named by its path in the
sample (``rf.forward_kw``, ``mfcs.mfc_o2.mass_slpm``, ``axes.spindle.velocity``), after ``t``
(the records' clock, Unix seconds) and ``elapsed_s`` (from the run's start). Passes: one row
per recorded pass, the columns of the passes table (``PASS_FIELDS``). An unknown value is an
empty cell, a flag 1 or 0, a set of status words space-separated."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from controller.records.schema import PASS_FIELDS, PassRecord

Sample = tuple[float, Mapping[str, Any]]

SAMPLE_TIME_COLUMNS = ("t", "elapsed_s")
PASS_COLUMNS = PASS_FIELDS


def samples_filename(run_id: int) -> str:
    return f"run-{run_id}-samples.csv"


def passes_filename(run_id: int) -> str:
    return f"run-{run_id}-passes.csv"


def flatten(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Every leaf of a sample by its dotted path; a device with no reading (None) is a leaf."""
    leaves: dict[str, Any] = {}
    _flatten_into(leaves, sample, "")
    return leaves


def _flatten_into(leaves: dict[str, Any], node: Mapping[str, Any], prefix: str) -> None:
    for key, value in node.items():
        # A sample is decoded JSON: its nodes are dicts (checked as such: it is the hot path).
        if isinstance(value, dict):
            _flatten_into(leaves, value, f"{prefix}{key}.")
        else:
            leaves[f"{prefix}{key}"] = value


def sample_columns(flat_samples: Iterable[Mapping[str, Any]]) -> list[str]:
    """The value columns of flattened samples, in the order first seen. A device that had no
    reading in some samples (its value None) has no column of its own once its fields are
    known: those samples leave its fields' cells empty."""
    seen: dict[str, None] = {}
    for flat in flat_samples:
        seen.update(dict.fromkeys(flat))
    return [path for path in seen if not any(other.startswith(path + ".") for other in seen)]


def write_samples_csv(samples: Sequence[Sample], out: TextIO,
                      started_at: float | None = None) -> int:
    """Writes the samples (``started_at``: the run's start, for ``elapsed_s``); returns the
    number of rows."""
    flat = [flatten(sample) for _t, sample in samples]
    columns = sample_columns(flat)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*SAMPLE_TIME_COLUMNS, *columns])
    for (t, _sample), values in zip(samples, flat, strict=True):
        elapsed = None if started_at is None else round(t - started_at, 3)
        writer.writerow([_cell(t), _cell(elapsed), *(_cell(values.get(c)) for c in columns)])
    return len(samples)


def write_passes_csv(passes: Sequence[PassRecord], out: TextIO) -> int:
    """Writes the passes, one row each in the order recorded; returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PASS_COLUMNS)
    for record in passes:
        writer.writerow([_cell(getattr(record, name)) for name in PASS_COLUMNS])
    return len(passes)


def samples_csv(samples: Sequence[Sample], started_at: float | None = None) -> str:
    buffer = io.StringIO()
    write_samples_csv(samples, buffer, started_at)
    return buffer.getvalue()


def passes_csv(passes: Sequence[PassRecord]) -> str:
    buffer = io.StringIO()
    write_passes_csv(passes, buffer)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "1" if value else "0"
    if isinstance(value, list | tuple | set | frozenset):
        return " ".join(str(v) for v in value)
    return str(value)
