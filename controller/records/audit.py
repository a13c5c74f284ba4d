"""The append-only audit trail: every command, login, refusal and configuration change.

Each entry carries the hash of the one before it (a hash chain), so an altered entry, a removed
one (a gap in the sequence, a broken link) or one slipped in between shows at `verify()`.
Triggers also refuse UPDATE and DELETE, which stops accidents though not a determined editor:
the chain is what reveals one. Removing the newest entries is caught by comparing the highest
sequence number SQLite ever issued (AUTOINCREMENT keeps it in `sqlite_sequence`). A chain
rewritten from some entry onwards is consistent by construction: anchor it by noting the head
hash `verify` prints somewhere else (a shift log, the plant system).

`append` commits with `synchronous=FULL` before returning: an operator command is acknowledged
only after its record is durable (domain.md rule 5). It blocks on the disk, so async callers use
`append_async`, which runs it in a worker thread.

    hash = sha256(canonical JSON of {seq, t, user, action, detail, outcome, reason, prev_hash})

where `detail` is the entry's canonical JSON text and the first entry's prev_hash is 64 zeros.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)

Outcome = Literal["accepted", "refused", "ok", "failed"]
OUTCOMES: frozenset[str] = frozenset({"accepted", "refused", "ok", "failed"})
GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused', 'ok', 'failed')),
    reason TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""
_COLUMNS = "seq, t, user, action, detail, outcome, reason, prev_hash, hash"


class AuditError(Exception):
    """The trail cannot be written or read (disk, permissions, not an audit database)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"audit trail {path}: {detail}")
        self.path = path
        self.detail = detail


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    t: float
    user: str
    action: str
    detail: dict[str, Any]
    outcome: str
    reason: str | None
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "t": self.t, "user": self.user, "action": self.action,
                "detail": self.detail, "outcome": self.outcome, "reason": self.reason,
                "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None  # the newest entry's hash: note it elsewhere to anchor


def canonical(value: Any) -> str:
    """The one JSON text of a value that its hash is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=str)


def entry_hash(*, seq: int, t: float, user: str, action: str, detail_text: str, outcome: str,
               reason: str | None, prev_hash: str) -> str:
    body = {"seq": seq, "t": t, "user": user, "action": action, "detail": detail_text,
            "outcome": outcome, "reason": reason, "prev_hash": prev_hash}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


class AuditTrail:
    """An append-only, hash-chained audit trail in one SQLite file.

    Safe to share between threads (one connection behind a lock) and between processes (each
    append is one IMMEDIATE transaction: the service and `povd users` can write at once)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN ourselves, to take the write lock up front.
            self._conn = sqlite3.connect(self.path, isolation_level=None,
                                         check_same_thread=False, timeout=10.0)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(self.path, str(exc)) from exc
        self._log = log.bind(path=str(self.path))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------
    def append(self, user: str, action: str, detail: dict[str, Any] | None = None,
               outcome: Outcome = "ok", reason: str | None = None) -> AuditEntry:
        """Append one entry; durable when this returns (AuditError if it cannot be)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, got {outcome!r}")
        detail_text = canonical(detail or {})
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    row = self._conn.execute(
                        "SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                    prev = row[0] if row else GENESIS
                    # From the highest number ever issued, not the last row: entries removed
                    # from the end then leave a gap the next append cannot paper over.
                    seq = self._highest_issued_locked() + 1
                    t = self.clock()
                    digest = entry_hash(seq=seq, t=t, user=user, action=action,
                                        detail_text=detail_text, outcome=outcome,
                                        reason=reason, prev_hash=prev)
                    self._conn.execute(
                        f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - fixed columns
                        (seq, t, user, action, detail_text, outcome, reason, prev, digest),
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._log.error("audit.append_failed", action=action, error=str(exc))
                raise AuditError(self.path, f"cannot append: {exc}") from exc
        return AuditEntry(seq, t, user, action, json.loads(detail_text), outcome, reason, prev,
                          digest)

    async def append_async(self, user: str, action: str, detail: dict[str, Any] | None = None,
                           outcome: Outcome = "ok", reason: str | None = None) -> AuditEntry:
        """`append` in a worker thread: the commit waits for the disk, the event loop must not."""
        return await asyncio.to_thread(self.append, user, action, detail, outcome, reason)

    # -- reading ---------------------------------------------------------------------------
    def _rows(self) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(
                    f"SELECT {_COLUMNS} FROM audit ORDER BY seq").fetchall()  # noqa: S608
            except sqlite3.Error as exc:
                raise AuditError(self.path, f"cannot read: {exc}") from exc

    def entries(self) -> list[AuditEntry]:
        return [
            AuditEntry(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8])
            for r in self._rows()
        ]

    def _highest_issued_locked(self) -> int:
        row = self._conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        return int(row[0]) if row else 0

    def _highest_issued(self) -> int:
        with self._lock:
            try:
                return self._highest_issued_locked()
            except sqlite3.Error as exc:
                raise AuditError(self.path, f"cannot read: {exc}") from exc

    def verify(self) -> AuditVerification:
        """Walk the chain from the first entry: the first place it breaks, and why."""
        rows = self._rows()
        prev, expected_seq = GENESIS, 1
        for seq, t, user, action, detail_text, outcome, reason, prev_hash, digest in rows:
            bad = None
            if seq != expected_seq:
                bad = f"sequence jumps from {expected_seq - 1} to {seq}: entries removed"
            elif prev_hash != prev:
                bad = "prev_hash does not match the previous entry's hash"
            elif entry_hash(seq=seq, t=t, user=user, action=action, detail_text=detail_text,
                            outcome=outcome, reason=reason, prev_hash=prev_hash) != digest:
                bad = "hash does not match the entry's content: altered"
            if bad is not None:
                return AuditVerification(False, len(rows), seq, bad)
            prev, expected_seq = digest, seq + 1
        last = expected_seq - 1
        issued = self._highest_issued()
        if issued > last:
            return AuditVerification(
                False, len(rows), last + 1,
                f"entries {last + 1}..{issued} were issued and are missing: removed",
            )
        return AuditVerification(True, len(rows), head_hash=prev if rows else None)


def cmd_audit_verify(path: Path) -> int:
    """`povd audit verify`: 0 if the chain is whole, 1 if it was tampered with (or unreadable)."""
    if not Path(path).exists():
        sys.stdout.write(f"no audit trail at {path}\n")
        return 1
    try:
        with AuditTrail(path) as trail:
            result = trail.verify()
    except AuditError as exc:
        sys.stdout.write(f"{exc}\n")
        return 1
    if result.ok:
        head = result.head_hash or "-"
        sys.stdout.write(f"{path}: ok, {result.entries} entries, chain intact; head {head}\n")
        return 0
    sys.stdout.write(
        f"{path}: TAMPERED at entry {result.first_bad_seq} of {result.entries}: {result.reason}\n"
    )
    return 1
