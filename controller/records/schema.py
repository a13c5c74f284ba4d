"""The run records' SQLite schema, the rows it holds as typed dataclasses, and the errors.

Shared by the writer (`controller.records.run_records`) and the readers
(`controller.records.reader`)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

SCHEMA_VERSION = 2

# The passes' columns added by schema version 2 (issue 9: the run report per layer), each
# nullable: a pass recorded before them has none. What the closed loop did in the pass, and
# what the plan asked of its layer, so the report needs neither the recipe nor the line.
PASS_COLUMNS_V2: tuple[tuple[str, str], ...] = (
    ("step", "INTEGER"),  # the deposit step's index in the plan
    ("layer_name", "TEXT"),
    ("layer_pass", "INTEGER"),  # 1-based, within the layer
    ("planned_passes", "INTEGER"),  # the layer's passes in the plan
    ("extra_passes", "INTEGER"),  # passes the operator had added to the layer by then
    ("diameter_source", "TEXT"),  # "gauge" or "forecast"
    ("planned_boundary_mm", "REAL"),  # the layer's planned outer diameter
    ("planned_inner_mm", "REAL"),  # the planned outer diameter of the layer below it
    ("start_diameter_mm", "REAL"),  # the rod's diameter when deposition began
    ("sicl4_g_min", "REAL"),
    ("sicl4_scale", "REAL"),
    ("dopant_slpm", "REAL"),
    ("planned_dopant_slpm", "REAL"),  # the recipe's dopant flow for the layer
    ("traverse_mm_min", "REAL"),
    ("planned_traverse_mm_min", "REAL"),
    ("efficiency", "REAL"),
    ("wanted_factor", "REAL"),
    ("limited", "INTEGER"),  # 0/1: the recipe's trims bound the loop
    ("composition_error_pct", "REAL"),
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipe_name TEXT NOT NULL,
    recipe_text TEXT NOT NULL,
    recipe_hash TEXT NOT NULL,
    line TEXT NOT NULL,
    machine TEXT NOT NULL,
    operator TEXT NOT NULL,
    preform_serial TEXT,
    bait_rod_lot TEXT,
    precursor_lot TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT CHECK (outcome IN
        ('complete', 'stopped', 'aborted', 'abandoned', 'interrupted')),
    last_checkpoint TEXT
);
CREATE TABLE IF NOT EXISTS state_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id),
    t REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS setpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id),
    t REAL NOT NULL,
    device TEXT NOT NULL,
    quantity TEXT NOT NULL,
    value REAL NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id),
    t REAL NOT NULL,
    alarm_time REAL NOT NULL,
    alarm_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    action TEXT NOT NULL,
    priority TEXT NOT NULL,
    category TEXT NOT NULL,
    message TEXT NOT NULL,
    user TEXT,
    value REAL,
    first_out INTEGER NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id),
    t REAL NOT NULL,
    user TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS passes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    layer INTEGER NOT NULL,
    pass_index INTEGER NOT NULL,
    diameter_mm REAL,
    deposited_g REAL,
    duration_s REAL,
    started_at REAL,
    ended_at REAL,
    {pass_columns_v2}
);
CREATE TABLE IF NOT EXISTS telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id),
    t REAL NOT NULL,
    sample TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    t REAL NOT NULL,
    layer INTEGER NOT NULL,
    pass_index INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    line TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t REAL NOT NULL,
    run_id INTEGER,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (line, seq)
);
CREATE INDEX IF NOT EXISTS state_changes_run ON state_changes(run_id);
CREATE INDEX IF NOT EXISTS setpoints_run ON setpoints(run_id);
CREATE INDEX IF NOT EXISTS alarms_run ON alarms(run_id);
CREATE INDEX IF NOT EXISTS commands_run ON commands(run_id);
CREATE INDEX IF NOT EXISTS passes_run ON passes(run_id);
CREATE INDEX IF NOT EXISTS telemetry_run_t ON telemetry(run_id, t);
CREATE INDEX IF NOT EXISTS checkpoints_run ON checkpoints(run_id);
""".replace("{pass_columns_v2}", ",\n    ".join(f"{name} {kind}" for name, kind in PASS_COLUMNS_V2))


class Outcome(StrEnum):
    COMPLETE = "complete"
    STOPPED = "stopped"
    ABORTED = "aborted"
    ABANDONED = "abandoned"  # an interrupted run the operator chose not to resume
    INTERRUPTED = "interrupted"  # the controller died; found again at the next start


class RecordsError(Exception):
    """A record could not be written as asked (a bad argument: unknown run, bad JSON...)."""


class RecordsUnavailable(RecordsError):
    """The store cannot write (disk full, I/O error, cannot open): hold the run (rule 9)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"run records unavailable: {detail}")
        self.detail = detail


def recipe_hash(recipe_text: str) -> str:
    return hashlib.sha256(recipe_text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RunHeader:
    recipe_name: str
    recipe_text: str
    line: str
    machine: str
    operator: str
    preform_serial: str | None = None
    bait_rod_lot: str | None = None
    precursor_lot: str | None = None
    started_at: float | None = None  # None: the records' clock at start_run

    @property
    def recipe_hash(self) -> str:
        return recipe_hash(self.recipe_text)


@dataclass(frozen=True, slots=True)
class RunSummary:
    id: int
    recipe_name: str
    recipe_hash: str
    line: str
    machine: str
    operator: str
    preform_serial: str | None
    bait_rod_lot: str | None
    precursor_lot: str | None
    started_at: float
    ended_at: float | None
    outcome: Outcome | None


@dataclass(frozen=True, slots=True)
class StateRecord:
    t: float
    from_state: str
    to_state: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class CommandRecord:
    t: float
    user: str
    command: str
    args: dict[str, Any]
    accepted: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class SetpointRecord:
    t: float
    device: str
    quantity: str
    value: float
    source: str


class _Valued(Protocol):
    @property
    def value(self) -> str: ...


class AlarmTransition(Protocol):
    """What the records keep of an alarm's transition (the alarm manager's ``AlarmEvent`` is
    one): the records depend on this shape, not on the alarm manager."""

    @property
    def alarm_id(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def from_state(self) -> _Valued: ...
    @property
    def to_state(self) -> _Valued: ...
    @property
    def priority(self) -> _Valued: ...
    @property
    def category(self) -> _Valued: ...
    @property
    def message(self) -> str: ...
    @property
    def time(self) -> float: ...
    @property
    def action(self) -> str: ...
    @property
    def user(self) -> str | None: ...
    @property
    def value(self) -> float | None: ...
    @property
    def first_out(self) -> bool: ...
    @property
    def note(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    t: float
    alarm_time: float
    alarm_id: str
    tag: str
    from_state: str
    to_state: str
    action: str
    priority: str
    category: str
    message: str
    user: str | None
    value: float | None
    first_out: bool
    note: str | None


@dataclass(frozen=True, slots=True)
class PassRecord:
    """One pass as recorded; the fields after ``ended_at`` are the columns of
    ``PASS_COLUMNS_V2`` (None in a pass recorded before them)."""

    layer: int
    pass_index: int
    diameter_mm: float | None
    deposited_g: float | None
    duration_s: float | None
    started_at: float | None
    ended_at: float | None
    step: int | None = None
    layer_name: str | None = None
    layer_pass: int | None = None
    planned_passes: int | None = None
    extra_passes: int | None = None
    diameter_source: str | None = None
    planned_boundary_mm: float | None = None
    planned_inner_mm: float | None = None
    start_diameter_mm: float | None = None
    sicl4_g_min: float | None = None
    sicl4_scale: float | None = None
    dopant_slpm: float | None = None
    planned_dopant_slpm: float | None = None
    traverse_mm_min: float | None = None
    planned_traverse_mm_min: float | None = None
    efficiency: float | None = None
    wanted_factor: float | None = None
    limited: bool | None = None
    composition_error_pct: float | None = None


# The passes table's columns (after id and run_id) are the record's fields, in order.
PASS_FIELDS = tuple(f.name for f in dataclasses.fields(PassRecord))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    run_id: int
    t: float
    layer: int
    pass_index: int
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventRecord:
    line: str
    seq: int
    t: float
    run_id: int | None
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunDetail:
    run: RunSummary
    recipe_text: str
    passes: list[PassRecord] = field(default_factory=list)
    alarms: list[AlarmRecord] = field(default_factory=list)
    states: list[StateRecord] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    setpoints: list[SetpointRecord] = field(default_factory=list)
    last_checkpoint: Checkpoint | None = None


def to_plain(value: Any) -> Any:
    """A record (or a list of them) as JSON-ready dicts and lists: for every reader that
    prints or serves the records (the CLI, the API)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value
