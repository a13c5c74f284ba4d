"""The audit trail's hash chain shows an altered, removed or inserted entry."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from controller.records.audit import GENESIS, AuditTrail, cmd_audit_verify, entry_hash


def _trail(tmp_path: Path, n: int = 5) -> AuditTrail:
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    for i in range(n):
        trail.append("olga", "hold" if i % 2 else "start", {"args": {"i": i}},
                     "accepted" if i % 3 else "refused", None if i % 3 else "state")
    return trail


def _tamper(path: Path, *sql: str) -> None:
    """What an editor with sqlite3 would do: drop the guards, then change rows."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_entries_chain_and_verify(tmp_path: Path) -> None:
    with _trail(tmp_path) as trail:
        entries = trail.entries()
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
        assert entries[0].prev_hash == GENESIS
        for before, after in itertools.pairwise(entries):
            assert after.prev_hash == before.hash
        assert entries[1].detail == {"args": {"i": 1}}
        assert entries[0].outcome == "refused"
        assert entries[0].reason == "state"
        result = trail.verify()
        assert result.ok
        assert result.entries == 5
        assert result.head_hash == entries[-1].hash


def test_append_returns_the_stored_entry(tmp_path: Path) -> None:
    with AuditTrail(tmp_path / "a.sqlite3", clock=lambda: 123.5) as trail:
        entry = trail.append("max", "jog", {"axis": "carriage"}, "accepted")
        assert trail.entries() == [entry]
        assert entry.t == 123.5
        assert entry.hash == entry_hash(seq=1, t=123.5, user="max", action="jog",
                                        detail_text='{"axis":"carriage"}', outcome="accepted",
                                        reason=None, prev_hash=GENESIS)


def test_empty_trail_verifies(tmp_path: Path) -> None:
    with AuditTrail(tmp_path / "a.sqlite3") as trail:
        assert trail.verify().ok
        assert trail.verify().entries == 0


def test_bad_outcome_is_refused(tmp_path: Path) -> None:
    with AuditTrail(tmp_path / "a.sqlite3") as trail, pytest.raises(ValueError, match="outcome"):
        trail.append("olga", "hold", {}, "maybe")  # type: ignore[arg-type]


def test_update_and_delete_are_refused_by_the_database(tmp_path: Path) -> None:
    _trail(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "audit.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET user = 'mallory' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 2")
    conn.close()


@pytest.mark.parametrize(
    ("sql", "bad_seq", "fragment"),
    [
        (["UPDATE audit SET user = 'mallory' WHERE seq = 3"], 3, "altered"),
        (["UPDATE audit SET outcome = 'accepted' WHERE seq = 4"], 4, "altered"),
        (["UPDATE audit SET detail = '{\"args\":{\"i\":99}}' WHERE seq = 2"], 2, "altered"),
        (["DELETE FROM audit WHERE seq = 3"], 4, "removed"),
        (["DELETE FROM audit WHERE seq = 1"], 2, "removed"),
        (["DELETE FROM audit WHERE seq >= 4"], 4, "removed"),
        (["DELETE FROM audit"], 1, "removed"),
        # Slipped in: everything from 3 on is renumbered to make room for a new entry 3.
        (["UPDATE audit SET seq = seq + 100 WHERE seq >= 3",
          "UPDATE audit SET seq = seq - 99 WHERE seq >= 100",
          "INSERT INTO audit VALUES (3, 1.0, 'mallory', 'abort', '{}', 'accepted', NULL, "
          "(SELECT hash FROM audit WHERE seq = 2), 'x')"], 3, "altered"),
    ],
)
def test_tampering_is_detected(
    tmp_path: Path, sql: list[str], bad_seq: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _trail(tmp_path).close()
    path = tmp_path / "audit.sqlite3"
    _tamper(path, *sql)
    with AuditTrail(path) as trail:
        result = trail.verify()
    assert not result.ok
    assert result.first_bad_seq == bad_seq
    assert result.reason is not None
    assert fragment in result.reason
    assert cmd_audit_verify(path) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_an_inserted_entry_with_a_real_hash_breaks_the_next_link(tmp_path: Path) -> None:
    _trail(tmp_path).close()
    path = tmp_path / "audit.sqlite3"
    conn = sqlite3.connect(path)
    prev = conn.execute("SELECT hash FROM audit WHERE seq = 2").fetchone()[0]
    conn.close()
    forged = entry_hash(seq=3, t=1.0, user="mallory", action="abort", detail_text="{}",
                        outcome="accepted", reason=None, prev_hash=prev)
    _tamper(path,
            "UPDATE audit SET seq = seq + 100 WHERE seq >= 3",
            "UPDATE audit SET seq = seq - 99 WHERE seq >= 100",
            f"INSERT INTO audit VALUES (3, 1.0, 'mallory', 'abort', '{{}}', 'accepted', NULL, "
            f"'{prev}', '{forged}')")
    with AuditTrail(path) as trail:
        result = trail.verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert result.reason is not None
    assert "prev_hash" in result.reason


def test_appending_after_a_truncation_does_not_hide_it(tmp_path: Path) -> None:
    _trail(tmp_path).close()
    path = tmp_path / "audit.sqlite3"
    _tamper(path, "DELETE FROM audit WHERE seq = 5")
    with AuditTrail(path) as trail:
        trail.append("olga", "hold", {}, "accepted")
        result = trail.verify()
    assert not result.ok
    assert result.first_bad_seq == 6


def test_cmd_audit_verify_ok_and_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _trail(tmp_path).close()
    assert cmd_audit_verify(tmp_path / "audit.sqlite3") == 0
    assert "ok, 5 entries" in capsys.readouterr().out
    assert cmd_audit_verify(tmp_path / "missing.sqlite3") == 1


async def test_append_async_is_durable_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    with AuditTrail(path) as trail:
        entry = await trail.append_async("olga", "login", {}, "ok")
        # A second connection (another process) sees it: committed, not just buffered.
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT hash FROM audit").fetchall() == [(entry.hash,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()


def test_two_writers_share_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    with AuditTrail(path) as service, AuditTrail(path) as cli:
        service.append("olga", "hold", {}, "accepted")
        cli.append("local:root", "users.add", {"name": "max"}, "ok")
        service.append("olga", "unhold", {}, "accepted")
        assert [e.seq for e in service.entries()] == [1, 2, 3]
        assert service.verify().ok
