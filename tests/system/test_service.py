"""LineService over a whole simulated line: role checks, starts from recipe text, interrupted
runs, alarms, trims, mode changes and the event log, each refusal recorded with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from controller.records.run_records import RecordsReader, RunHeader
from controller.records.schema import EventRecord, Outcome, RunDetail
from controller.safety.states import State
from controller.service.line_service import LineService
from controller.service.users import UserStore
from tests.system.rig import RECIPES, Rig, line_rig

pytestmark = pytest.mark.slow

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
# One user of each role; the name says the role.
USERS = {"olga": "operator", "max": "maintenance", "erin": "engineer", "vic": "viewer",
         "ada": "admin"}
LONG = (RECIPES / "long.yaml").read_text()


def user_store(tmp_path: Path) -> UserStore:
    store = UserStore(tmp_path / "users.json", hasher=FAST)
    for name, role in USERS.items():
        store.add(name, f"{name}-password", role)
    return store


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Rig, LineService]]:
    async with line_rig(tmp_path) as rig:
        yield rig, LineService(rig.sup, user_store(tmp_path), rig.db)


def command_events(rig: Rig) -> list[dict[str, Any]]:
    return [e.payload for e in RecordsReader(rig.db).events_since(0, line=rig.line.line)
            if e.kind == "command"]


async def ended(rig: Rig, run_id: int) -> RunDetail:
    """The run's records once its end is durable."""
    def has_ended() -> bool:
        detail = RecordsReader(rig.db).get_run(run_id)
        return detail is not None and detail.run.outcome is not None
    await rig.wait_for(has_ended, 10, f"run {run_id}'s end recorded")
    detail = RecordsReader(rig.db).get_run(run_id)
    assert detail is not None
    return detail


async def start_long(rig: Rig, service: LineService, user: str = "olga") -> int:
    reply = await service.execute(user, "start", {"recipe_text": LONG, "preform_serial": "S-1"})
    assert reply.accepted, reply.reason
    run_id = reply.data["run_id"]
    assert isinstance(run_id, int)
    return run_id


async def test_role_refusals_say_why_and_are_recorded(
        served: tuple[Rig, LineService]) -> None:
    rig, service = served
    refusals = {
        ("vic", "start"): "role viewer may not start (needs operator or engineer)",
        ("max", "hold"): "role maintenance may not hold (needs operator or engineer)",
        ("olga", "jog"): "role operator may not jog (needs maintenance)",
        ("ada", "stop"): "role admin may not stop",
        ("nobody", "hold"): "unknown user 'nobody'",
    }
    for (user, command), why in refusals.items():
        reply = await service.execute(user, command, {"recipe_text": LONG})
        assert not reply.accepted
        assert reply.reason is not None and reply.reason.startswith(why), reply.reason
    recorded = {(e["user"], e["command"]): e for e in command_events(rig)}
    for (user, command), why in refusals.items():
        entry = recorded[(user, command)]
        assert entry["accepted"] is False and entry["reason"].startswith(why)
        assert "recipe_text" not in entry["args"]  # the recipe is in its run, not every command
    assert rig.sup.sm.state is State.IDLE


async def test_start_from_text_trim_and_refusals_during_the_run(
        served: tuple[Rig, LineService]) -> None:
    rig, service = served
    bad = LONG.replace("sicl4_g_min: 40", "sicl4_g_min: 4000")
    reply = await service.execute("olga", "start", {"recipe_text": bad})
    assert not reply.accepted and reply.reason is not None
    assert "steps[3].layers[0].sicl4_g_min" in reply.reason
    assert "full scale" in reply.reason
    assert rig.sup.sm.state is State.IDLE
    refused_start = command_events(rig)[-1]
    assert (refused_start["user"], refused_start["command"]) == ("olga", "start")
    assert refused_start["accepted"] is False and refused_start["reason"] == reply.reason

    run_id = await start_long(rig, service)
    await rig.wait_depositing(passes_done=1)
    layer_kw = 50.0
    assert rig.sup.act.commanded.power_kw == pytest.approx(layer_kw)

    trimmed = await service.execute("olga", "trim", {"power_kw": 3.0, "traverse_pct": -5})
    assert trimmed.accepted, trimmed.reason
    assert rig.sup.act.commanded.power_kw == pytest.approx(layer_kw + 3.0)
    outside = await service.execute("olga", "trim", {"power_kw": 9.0})
    assert not outside.accepted
    assert outside.reason == "power trim 9 kW outside the recipe's [-5, 5] kW"
    assert rig.sup.act.commanded.power_kw == pytest.approx(layer_kw + 3.0)

    mode = await service.execute("max", "mode", {"mode": "maintenance"})
    assert not mode.accepted and mode.reason is not None
    assert "mode change is not allowed in Execute" in mode.reason
    viewer = await service.execute("vic", "hold", {})
    assert not viewer.accepted

    stopped = await service.execute("olga", "stop", {"reason": "test over"})
    assert stopped.accepted, stopped.reason
    await rig.wait_state(State.STOPPED)
    detail = await ended(rig, run_id)
    assert detail.run.preform_serial == "S-1" and detail.run.operator == "olga"
    assert detail.recipe_text == LONG
    commands = [(c.user, c.command, c.accepted, c.reason) for c in detail.commands]
    assert ("olga", "trim", True, None) in commands
    assert ("olga", "trim", False, outside.reason) in commands
    assert ("max", "mode", False, mode.reason) in commands
    assert ("vic", "hold", False, viewer.reason) in commands
    assert ("olga", "stop", True, None) in commands
    trims = [s for s in detail.setpoints if s.quantity == "power_trim_kw"]
    assert [s.value for s in trims] == [3.0] and trims[0].source == "trim:olga"


async def test_trim_outside_a_run_is_refused(served: tuple[Rig, LineService]) -> None:
    rig, service = served
    reply = await service.execute("olga", "trim", {"power_kw": 1.0})
    assert not reply.accepted
    assert reply.reason == "trim applies to a running deposition, not in Idle"
    assert command_events(rig)[-1]["reason"] == reply.reason


async def test_an_interrupted_run_must_be_resumed(tmp_path: Path) -> None:
    async with line_rig(tmp_path) as rig:
        header = RunHeader(recipe_name="long", recipe_text=LONG, line=rig.line.line,
                           machine=rig.line.machine, operator="olga")
        # A run that started and never ended: the controller died during it.
        interrupted = await rig.records.start_run(header)
        service = LineService(rig.sup, user_store(tmp_path), rig.db)
        assert service.status()["interrupted_runs"] == [interrupted]

        refused = await service.execute("olga", "start", {"recipe_text": LONG})
        assert not refused.accepted and refused.reason is not None
        assert f"run {interrupted} (long) was interrupted" in refused.reason
        assert f"resume_run_id={interrupted}" in refused.reason
        assert f"--abandon {interrupted}" in refused.reason
        wrong = await service.execute("olga", "start",
                                      {"recipe_text": LONG, "resume_run_id": interrupted + 7})
        assert not wrong.accepted
        assert wrong.reason == f"run {interrupted + 7} is not an interrupted run of this line"
        # The same name is not the same recipe: only the text it ran (its hash) resumes it.
        edited = LONG.replace("passes: 40", "passes: 41", 1)
        assert edited != LONG
        other = await service.execute("olga", "start",
                                      {"recipe_text": edited, "resume_run_id": interrupted})
        assert not other.accepted and other.reason is not None
        assert f"run {interrupted} ran recipe 'long' (sha256 " in other.reason
        assert "differences: -" in other.reason
        assert "passes: 40" in other.reason and "passes: 41" in other.reason
        refusals = [e for e in command_events(rig) if e["command"] == "start"]
        assert [e["reason"] for e in refusals] == [refused.reason, wrong.reason, other.reason]

        resumed = await service.execute("olga", "start",
                                        {"recipe_text": LONG, "resume_run_id": interrupted})
        assert resumed.accepted, resumed.reason
        assert resumed.data["run_id"] == interrupted
        await rig.wait_depositing(passes_done=1)
        assert service.status()["interrupted_runs"] == []
        assert (await service.execute("olga", "abort", {})).accepted
        await rig.wait_state(State.ABORTED)
        detail = await ended(rig, interrupted)
        kinds = [e.kind for e in RecordsReader(rig.db).events_since(0) if e.run_id == interrupted]
        assert "run_resumed" in kinds
        assert ("olga", "start", True) in [(c.user, c.command, c.accepted)
                                          for c in detail.commands]
        assert detail.run.outcome is Outcome.ABORTED


async def test_an_interrupted_run_can_be_abandoned(tmp_path: Path) -> None:
    async with line_rig(tmp_path) as rig:
        header = RunHeader(recipe_name="long", recipe_text=LONG, line=rig.line.line,
                           machine=rig.line.machine, operator="olga")
        interrupted = await rig.records.start_run(header)
        service = LineService(rig.sup, user_store(tmp_path), rig.db)
        started = await service.execute("olga", "start",
                                        {"recipe_text": LONG, "abandon_run_id": interrupted})
        assert started.accepted, started.reason
        assert started.data["run_id"] != interrupted
        assert service.status()["interrupted_runs"] == []
        old = RecordsReader(rig.db).get_run(interrupted)
        assert old is not None
        assert old.run.outcome is Outcome.ABANDONED
        assert (await service.execute("olga", "abort", {})).accepted


async def test_ack_and_shelve(served: tuple[Rig, LineService]) -> None:
    rig, service = served
    # A trip alarm while idle: annunciated, acknowledged by name.
    rig.sim.faults.inject("safety_io", "scrubber_not_ready")
    await rig.wait_for(lambda: rig.sup.alarms.status("scrubber_not_ready").state.value
                       != "normal", 10, "scrubber alarm")
    acked = await service.execute("olga", "ack", {"alarm_id": "scrubber_not_ready"})
    assert acked.accepted and acked.data["changed"] is True
    status = rig.sup.alarms.status("scrubber_not_ready")
    assert status.state.value == "ack_active" and status.acked_by == "olga"
    refused = await service.execute("olga", "shelve", {"alarm_id": "scrubber_not_ready",
                                                       "for_s": 60, "reason": "fitter on it"})
    assert not refused.accepted
    assert refused.reason is not None and "trip alarms cannot be shelved" in refused.reason

    # A device alarm (the gauge lost: deposition would go on open loop) may be shelved.
    rig.sim.faults.inject("diameter_gauge", "silent")
    await rig.wait_for(lambda: rig.sup.alarms.status("link_gauge").state.value != "normal",
                       15, "gauge alarm")
    no_reason = await service.execute("olga", "shelve", {"alarm_id": "link_gauge", "for_s": 60})
    assert not no_reason.accepted and no_reason.reason == "shelving needs a reason"
    no_time = await service.execute("olga", "shelve",
                                    {"alarm_id": "link_gauge", "reason": "gauge swapped"})
    assert not no_time.accepted
    assert no_time.reason == "shelving needs a positive duration (for_s)"
    shelved = await service.execute("olga", "shelve", {"alarm_id": "link_gauge", "for_s": 60,
                                                       "reason": "gauge swapped"})
    assert shelved.accepted, shelved.reason
    assert rig.sup.alarms.status("link_gauge").state.value == "shelved"
    assert "link_gauge" not in [a["id"] for a in service.status()["alarms"]]
    unknown = await service.execute("olga", "ack", {"alarm_id": "no_such_alarm"})
    assert not unknown.accepted and unknown.reason is not None
    assert "no_such_alarm" in unknown.reason
    rig.sim.faults.clear()

    recorded = [(e["command"], e["accepted"], e["reason"]) for e in command_events(rig)]
    assert ("ack", True, None) in recorded
    assert ("shelve", False, "shelving needs a reason") in recorded
    assert ("shelve", True, None) in recorded


async def test_events_since_returns_increasing_seq(served: tuple[Rig, LineService]) -> None:
    rig, service = served
    for _ in range(3):
        await service.execute("vic", "hold", {})
    events = service.events_since(0)
    seqs = [e.seq for e in events]
    assert len(seqs) >= 3 and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert service.last_event_seq() == seqs[-1]
    middle = seqs[len(seqs) // 2]
    assert [e.seq for e in service.events_since(middle)] == [s for s in seqs if s > middle]
    assert service.events_since(seqs[-1]) == []
    # The service's events are the durable records, nothing invented.
    durable: list[EventRecord] = RecordsReader(rig.db).events_since(0, line=rig.line.line)
    assert [(e.seq, e.kind) for e in durable] == [(e.seq, e.kind) for e in events]
