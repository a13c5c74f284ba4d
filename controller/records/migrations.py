"""The run records' schema brought up to date when the writer opens the file: the tables
created where missing, then each migration from the file's ``user_version`` to
``SCHEMA_VERSION`` in one transaction (all or nothing), the version set with them. A file of a
newer version is refused: an older povd must not write into a schema it does not know
(docs/operations.md, Upgrade)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import structlog

from controller.records.schema import PASS_COLUMNS_V2, SCHEMA, SCHEMA_VERSION, RecordsUnavailable

log = structlog.get_logger(__name__)

Migration = Callable[[sqlite3.Connection], None]


def table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _add_columns(conn: sqlite3.Connection, table: str,
                 columns: tuple[tuple[str, str], ...]) -> None:
    """Only those missing: a file created by this version has them already."""
    present = table_columns(conn, table)
    for name, kind in columns:
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _to_v2(conn: sqlite3.Connection) -> None:
    """What the loop did in each pass, for the report per layer (issue 9)."""
    _add_columns(conn, "passes", PASS_COLUMNS_V2)


# The migration that brings a file to each version (from the version before it).
MIGRATIONS: dict[int, Migration] = {2: _to_v2}


def schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def open_schema(conn: sqlite3.Connection) -> None:
    """Create and migrate; raises RecordsUnavailable for a file of a newer schema. The
    connection is in autocommit mode (``isolation_level=None``), as the writer's is."""
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise RecordsUnavailable(
            f"the records' schema is version {found}, newer than this povd's "
            f"{SCHEMA_VERSION}: use the povd that wrote them")
    conn.executescript(SCHEMA)  # CREATE ... IF NOT EXISTS: the tables a new file lacks
    if found == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            migrate = MIGRATIONS.get(version)
            if migrate is not None:
                migrate(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if found > 0:
        log.info("records_migrated", from_version=found, to_version=SCHEMA_VERSION)
