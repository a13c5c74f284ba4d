"""One writer: no module but controller/safety/writer.py calls a driver's setter, and the
writer refuses (with the reason, reported) every write outside the envelope."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.config.line import load_line_config
from controller.safety.envelope import EnvelopeInputs, compute
from controller.safety.states import Mode, State
from controller.safety.writer import Actuators, EnvelopeRefused
from tests.fakes import RecordingMachine, recording_machine

ROOT = Path(__file__).resolve().parents[2] / "controller"
WRITER = ROOT / "safety" / "writer.py"
DRIVER_SETTERS = frozenset({
    "set_power_kw", "set_ramp_kw_s", "rf_on", "rf_off", "reset_fault", "set_flow_slpm",
    "write_outputs", "set_output", "heartbeat", "reset_heartbeat_latch", "enable", "disable",
    "set_velocity", "move_absolute", "move_relative", "jog", "home", "stop", "reset_alarm",
    "configure_comm_watchdog", "oscillate", "set_oscillation_speed", "set_oscillation_strokes",
})
# The named exceptions: the heartbeat (the safety cycle's own proof of life) and each drive's
# communication watchdog, set once at connect.
EXCEPTIONS = {("polling.py", "heartbeat"), ("supervisor.py", "configure_comm_watchdog")}
LINE = load_line_config()


def _driver_calls(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(node.func.attr, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in DRIVER_SETTERS and "machine" in ast.unparse(node.func.value)]


def test_no_module_but_the_writer_calls_a_drivers_setter() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == WRITER:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line} {name}"
                      for name, line in _driver_calls(path)
                      if (path.name, name) not in EXCEPTIONS]
    assert offenders == []


def test_the_scan_finds_a_bypass() -> None:
    assert _driver_calls(WRITER), "the scan must see the writer's own driver calls"


@dataclass
class Bench:
    """A writer over recording fakes, and the refusals it reported."""

    act: Actuators
    machine: RecordingMachine
    refused: list[EnvelopeRefused] = field(default_factory=list)


def bench(**inputs: Any) -> Bench:
    env = compute(EnvelopeInputs(**inputs), LINE)
    machine = recording_machine()
    b = Bench(Actuators(machine, lambda: env), machine)  # type: ignore[arg-type]
    b.act.add_refusal_listener(lambda refusal, source: b.refused.append(refusal))
    return b


async def test_rf_on_is_refused_outside_a_run_and_nothing_is_written() -> None:
    b = bench(state=State.IDLE, rod_temperature_c=25.0)
    with pytest.raises(EnvelopeRefused, match="state Idle"):
        await b.act.rf_on("test")
    assert b.machine.log == [] and len(b.refused) == 1 and b.refused[0].device == "rf"


async def test_a_flow_above_the_envelope_is_refused_not_clamped() -> None:
    b = bench(state=State.ABORTED, rod_temperature_c=25.0)
    with pytest.raises(EnvelopeRefused, match="above 10 slpm"):
        await b.act.set_flow_slpm("mfc_ar", 30.0, "test")
    await b.act.set_flow_slpm("mfc_ar", 10.0, "test")  # the purge flow is allowed
    assert b.machine.names() == ["mfc_ar.set_flow_slpm"]


async def test_writes_towards_the_safe_state_always_pass() -> None:
    b = bench(state=State.ABORTED, conditions=frozenset({"estop", "gas_detected"}),
              rod_temperature_c=25.0)
    await b.act.rf_off("test")
    await b.act.set_flow_slpm("mfc_o2", 0.0, "test")
    await b.act.set_outputs("test", gas_master_valve=False, precursor_valve=False,
                            rf_permit=False)
    await b.act.stop_axis("carriage", "test")
    assert len(b.machine.log) == 4 and b.refused == []


@pytest.mark.parametrize(("output", "inputs"), [
    ("gas_master_valve", {"conditions": frozenset({"exhaust_lost"})}),
    ("precursor_valve", {"state": State.HELD}),
    ("heater_a", {"state": State.IDLE}),
    ("rf_permit", {"state": State.ABORTED}),
])
async def test_opening_an_output_the_envelope_forbids_is_refused(
        output: str, inputs: dict[str, Any]) -> None:
    b = bench(**{"state": State.EXECUTE, "plasma_lit": True, **inputs})
    with pytest.raises(EnvelopeRefused):
        await b.act.set_outputs("test", **{output: True})
    assert b.machine.log == []


async def test_the_fan_is_never_switched_off_while_gas_may_be_present() -> None:
    b = bench(state=State.ABORTED, conditions=frozenset({"gas_detected"}))
    with pytest.raises(EnvelopeRefused, match="exhaust"):
        await b.act.set_outputs("test", exhaust_fan=False)


async def test_a_hot_rod_keeps_turning_whoever_asks() -> None:
    b = bench(state=State.IDLE, mode=Mode.MAINTENANCE, rod_temperature_c=900.0)
    for stop in (b.act.stop_axis("spindle", "test"), b.act.spindle_rpm(0.0, "test"),
                 b.act.disable_axis("spindle", "test")):
        with pytest.raises(EnvelopeRefused, match="rod is hot"):
            await stop
    assert b.machine.log == []


async def test_a_door_open_caps_every_axis_at_setup_speed() -> None:
    b = bench(state=State.IDLE, mode=Mode.MAINTENANCE, doors_closed=False,
              rod_temperature_c=25.0)
    setup = LINE.axis("carriage").max_speed * LINE.axis("carriage").setup_speed_fraction
    with pytest.raises(EnvelopeRefused, match="doors_open"):
        await b.act.move_axis("carriage", 100.0, setup * 2, "test")
    with pytest.raises(EnvelopeRefused):
        await b.act.jog_axis("carriage", 1, setup * 2, "test")
    await b.act.move_axis("carriage", 100.0, setup, "test")
    assert b.machine.names() == ["carriage.move_absolute"]
