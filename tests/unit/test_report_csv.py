"""The CSV export of a run (issue 10): the samples, one row each with a column per recorded
value, and the passes, one row each with the passes table's columns; read back from real
records and checked against what was recorded."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from controller.records.reader import RecordsReader
from controller.records.report_csv import (
    PASS_COLUMNS,
    passes_csv,
    sample_columns,
    samples_csv,
)
from controller.records.schema import PASS_FIELDS
from tests.recorded_run import MFCS, PASSES, SAMPLES, START, record_run


@pytest.fixture
async def recorded(tmp_path: Path) -> tuple[RecordsReader, int]:
    db = tmp_path / "records.sqlite3"
    return RecordsReader(db), await record_run(db)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_samples_have_a_row_each_and_a_column_per_value(
        recorded: tuple[RecordsReader, int]) -> None:
    reader, run_id = recorded
    detail = reader.get_run(run_id)
    assert detail is not None
    samples = reader.telemetry(run_id)
    assert len(samples) == SAMPLES
    text = samples_csv(samples, detail.run.started_at)
    header = next(csv.reader(io.StringIO(text)))
    rows = _rows(text)
    assert len(rows) == SAMPLES
    assert header[:2] == ["t", "elapsed_s"]
    for column in ("rf.forward_kw", "rf.reflected_kw", "axes.spindle.velocity",
                   "axes.carriage.velocity", "gauge.diameter_mm", "gauge.valid", "state",
                   *(f"mfcs.{m}.mass_slpm" for m in MFCS)):
        assert column in header, column
    # The gauge had no reading in the first sample: no column of its own, empty cells.
    assert "gauge" not in header
    assert rows[0]["gauge.diameter_mm"] == "" and rows[0]["gauge.valid"] == ""
    assert float(rows[1]["gauge.diameter_mm"]) == pytest.approx(30.05)
    assert rows[1]["gauge.valid"] == "1"
    assert float(rows[3]["rf.forward_kw"]) == pytest.approx(50.3)
    assert float(rows[0]["t"]) == START + 20
    assert float(rows[0]["elapsed_s"]) == pytest.approx(START + 20 - detail.run.started_at)
    assert rows[0]["mfcs.mfc_o2.status"] == "MOV"
    assert rows[0]["state"] == "Execute"
    assert len(set(header)) == len(header)


async def test_passes_have_the_passes_table_columns(
        recorded: tuple[RecordsReader, int]) -> None:
    reader, run_id = recorded
    detail = reader.get_run(run_id)
    assert detail is not None
    text = passes_csv(detail.passes)
    assert next(csv.reader(io.StringIO(text))) == list(PASS_FIELDS) == list(PASS_COLUMNS)
    rows = _rows(text)
    assert [int(r["pass_index"]) for r in rows] == [p.pass_index for p in PASSES]
    assert [float(r["diameter_mm"]) for r in rows] == [p.diameter_mm for p in PASSES]
    assert [r["layer_name"] for r in rows] == ["base"] * 3 + ["doped"] * 3
    assert [r["limited"] for r in rows] == ["0", "0", "1"] * 2
    assert {r["composition_error_pct"] for r in rows} == {""}  # unknown: an empty cell


def test_no_samples_is_a_header_only() -> None:
    assert samples_csv([]) == "t,elapsed_s\n"
    assert sample_columns([]) == []
    assert passes_csv([]).strip() == ",".join(PASS_FIELDS)
