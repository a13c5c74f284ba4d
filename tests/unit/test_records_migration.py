"""The passes' fields for the report per layer round-trip through the records, and a file of an
older schema keeps working: read as it is, migrated when the writer opens it; a newer one is
refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.cli.records_commands import run_report
from controller.records.migrations import open_schema, schema_version, table_columns
from controller.records.run_records import (
    PassRecord,
    RecordsReader,
    RecordsUnavailable,
    RunHeader,
    RunRecords,
)
from controller.records.schema import PASS_COLUMNS_V2, PASS_FIELDS, SCHEMA, SCHEMA_VERSION

HEADER = RunHeader(recipe_name="demo", recipe_text="name: demo\n", line="line-sim",
                   machine="lathe-1", operator="alice")

FULL_PASS = PassRecord(
    layer=1, pass_index=7, diameter_mm=31.42, deposited_g=2.5, duration_s=54.5,
    started_at=100.0, ended_at=154.5, step=3, layer_name="middle", layer_pass=2,
    planned_passes=7, extra_passes=1, diameter_source="forecast", planned_boundary_mm=32.1,
    planned_inner_mm=31.0, start_diameter_mm=30.02, sicl4_g_min=63.0, sicl4_scale=1.05,
    dopant_slpm=0.525, planned_dopant_slpm=0.5, traverse_mm_min=320.5,
    planned_traverse_mm_min=330.0, efficiency=0.4512, wanted_factor=1.0731, limited=True,
    composition_error_pct=-0.83,
)


def v1_file(path: Path) -> None:
    """A records file as schema version 1 left it (the passes without the newer columns),
    holding one run and one pass."""
    added = ",\n    " + ",\n    ".join(f"{name} {kind}" for name, kind in PASS_COLUMNS_V2)
    assert added in SCHEMA
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA.replace(added, ""))
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO runs (recipe_name, recipe_text, recipe_hash, line, machine,"
                 " operator, started_at) VALUES ('old', 'name: old', 'x', 'line-sim',"
                 " 'lathe-1', 'bob', 1.0)")
    conn.execute("INSERT INTO passes (run_id, layer, pass_index, diameter_mm, deposited_g,"
                 " duration_s, started_at, ended_at) VALUES (1, 0, 1, 30.3, 1.2, 60, 1, 61)")
    conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return schema_version(conn)
    finally:
        conn.close()


async def test_every_field_of_a_pass_round_trips(tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    async with RunRecords(db) as records:
        run_id = await records.start_run(HEADER)
        await records.record_pass(run_id, FULL_PASS)
        await records.record_pass(run_id, PassRecord(0, 8, None, None, None, None, None))
    detail = RecordsReader(db).get_run(run_id)
    assert detail is not None
    assert detail.passes == [FULL_PASS, PassRecord(0, 8, None, None, None, None, None)]
    assert detail.passes[0].limited is True  # a bool again, not SQLite's 1
    assert _version(db) == SCHEMA_VERSION


def test_an_old_file_reads_before_it_is_migrated(tmp_path: Path) -> None:
    """The CLI reads a file read-only: one the writer has not opened since the upgrade."""
    db = tmp_path / "records.sqlite3"
    v1_file(db)
    detail = RecordsReader(db).get_run(1)
    assert detail is not None
    assert detail.passes == [PassRecord(0, 1, 30.3, 1.2, 60.0, 1.0, 61.0)]
    (layer,) = run_report(detail)["layers"]
    assert (layer["name"], layer["passes"], layer["measured_boundary_mm"]) == ("layer 1", 1, 30.3)
    assert layer["planned_boundary_mm"] is None
    assert _version(db) == 1  # the reader changed nothing


async def test_the_writer_migrates_an_old_file(tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    v1_file(db)
    async with RunRecords(db) as records:
        run_id = await records.start_run(HEADER)
        await records.record_pass(run_id, FULL_PASS)
    assert _version(db) == SCHEMA_VERSION
    reader = RecordsReader(db)
    old = reader.get_run(1)
    assert old is not None
    assert old.passes == [PassRecord(0, 1, 30.3, 1.2, 60.0, 1.0, 61.0)]  # kept, new fields None
    new = reader.get_run(run_id)
    assert new is not None and new.passes == [FULL_PASS]
    # Opening a migrated file again changes nothing.
    async with RunRecords(db):
        pass
    assert _version(db) == SCHEMA_VERSION


def test_the_migration_gives_the_same_table_as_a_new_file(tmp_path: Path) -> None:
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    v1_file(old)
    for path in (old, new):
        conn = sqlite3.connect(path, isolation_level=None)
        open_schema(conn)
        assert table_columns(conn, "passes") == {"id", "run_id", *PASS_FIELDS}
        conn.close()
    assert _version(old) == _version(new) == SCHEMA_VERSION


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """An older povd (a rollback without restoring the backup) must not write into it."""
    db = tmp_path / "records.sqlite3"
    async with RunRecords(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RecordsUnavailable, match="newer than this povd"):
        async with RunRecords(db):
            pass
    assert _version(db) == SCHEMA_VERSION + 1


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "records.sqlite3"
    v1_file(db)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE passes ADD COLUMN step INTEGER")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("controller.records.migrations.MIGRATIONS", {2: broken})
    conn = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        open_schema(conn)
    assert "step" not in table_columns(conn, "passes")
    conn.close()
    assert _version(db) == 1
