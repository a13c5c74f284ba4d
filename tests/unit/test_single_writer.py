"""One writer: no module but controller/safety/writer.py calls a driver's setter, and the
writer refuses (with the reason, reported) every write outside the envelope."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_line_config
from controller.safety.envelope import EnvelopeInputs, compute
from controller.safety.writer import Actuators, EnvelopeRefused
from controller.states import Mode, State

ROOT = Path(__file__).resolve().parents[2] / "controller"
WRITER = ROOT / "safety" / "writer.py"
DRIVER_SETTERS = frozenset({
    "set_power_kw", "set_ramp_kw_s", "rf_on", "rf_off", "reset_fault", "set_flow_slpm",
    "write_outputs", "set_output", "heartbeat", "reset_heartbeat_latch", "enable", "disable",
    "set_velocity", "move_absolute", "move_relative", "jog", "home", "stop", "reset_alarm",
    "configure_comm_watchdog",
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


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.full_scale_slpm = 100.0
        self._log = log

    def __getattr__(self, attr: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> None:
            self._log.append(f"{self.name}.{attr}")
        return call


def fake_machine(log: list[str]) -> Any:
    @dataclasses.dataclass
    class FakeMachine:
        rf: Any
        safety_io: Any
        mfcs: dict[str, Any]
        axes: dict[str, Any]

    return FakeMachine(
        rf=Recorder("rf", log), safety_io=Recorder("safety_io", log),
        mfcs={n: Recorder(n, log) for n in ("mfc_ar", "mfc_o2", "mfc_n2", "mfc_sicl4",
                                             "mfc_dopant")},
        axes={n: Recorder(n, log) for n in ("spindle", "carriage", "torch_slide")})


def writer(log: list[str], refused: list[EnvelopeRefused], **inputs: Any) -> Actuators:
    env = compute(EnvelopeInputs(**inputs), LINE)
    act = Actuators(fake_machine(log), lambda: env)
    act.add_refusal_listener(lambda refusal, source: refused.append(refusal))
    return act


async def test_rf_on_is_refused_outside_a_run_and_nothing_is_written() -> None:
    log: list[str] = []
    refused: list[EnvelopeRefused] = []
    act = writer(log, refused, state=State.IDLE, rod_temperature_c=25.0)
    with pytest.raises(EnvelopeRefused, match="state Idle"):
        await act.rf_on("test")
    assert log == [] and len(refused) == 1 and refused[0].device == "rf"


async def test_a_flow_above_the_envelope_is_refused_not_clamped() -> None:
    log: list[str] = []
    refused: list[EnvelopeRefused] = []
    act = writer(log, refused, state=State.ABORTED, rod_temperature_c=25.0)
    with pytest.raises(EnvelopeRefused, match="above 10 slpm"):
        await act.set_flow_slpm("mfc_ar", 30.0, "test")
    await act.set_flow_slpm("mfc_ar", 10.0, "test")  # the purge flow is allowed
    assert log == ["mfc_ar.set_flow_slpm"]


async def test_writes_towards_the_safe_state_always_pass() -> None:
    log: list[str] = []
    act = writer(log, [], state=State.ABORTED, conditions=frozenset({"estop", "gas_detected"}),
                 rod_temperature_c=25.0)
    await act.rf_off("test")
    await act.set_flow_slpm("mfc_o2", 0.0, "test")
    await act.set_outputs("test", gas_master_valve=False, precursor_valve=False, rf_permit=False)
    await act.stop_axis("carriage", "test")
    assert len(log) == 4


@pytest.mark.parametrize(("output", "inputs"), [
    ("gas_master_valve", {"conditions": frozenset({"exhaust_lost"})}),
    ("precursor_valve", {"state": State.HELD}),
    ("heater_a", {"state": State.IDLE}),
    ("rf_permit", {"state": State.ABORTED}),
])
async def test_opening_an_output_the_envelope_forbids_is_refused(
        output: str, inputs: dict[str, Any]) -> None:
    log: list[str] = []
    act = writer(log, [], **{"state": State.EXECUTE, "plasma_lit": True, **inputs})
    with pytest.raises(EnvelopeRefused):
        await act.set_outputs("test", **{output: True})
    assert log == []


async def test_the_fan_is_never_switched_off_while_gas_may_be_present() -> None:
    act = writer([], [], state=State.ABORTED, conditions=frozenset({"gas_detected"}))
    with pytest.raises(EnvelopeRefused, match="exhaust"):
        await act.set_outputs("test", exhaust_fan=False)


async def test_a_hot_rod_keeps_turning_whoever_asks() -> None:
    log: list[str] = []
    act = writer(log, [], state=State.IDLE, mode=Mode.MAINTENANCE, rod_temperature_c=900.0)
    for stop in (act.stop_axis("spindle", "test"), act.spindle_rpm(0.0, "test"),
                 act.disable_axis("spindle", "test")):
        with pytest.raises(EnvelopeRefused, match="rod is hot"):
            await stop
    assert log == []


async def test_a_door_open_caps_every_axis_at_setup_speed() -> None:
    act = writer([], [], state=State.IDLE, mode=Mode.MAINTENANCE, doors_closed=False,
                 rod_temperature_c=25.0)
    setup = LINE.axis("carriage").max_speed * LINE.axis("carriage").setup_speed_fraction
    with pytest.raises(EnvelopeRefused, match="doors_open"):
        await act.move_axis("carriage", 100.0, setup * 2, "test")
    with pytest.raises(EnvelopeRefused):
        await act.jog_axis("carriage", 1, setup * 2, "test")
    await act.move_axis("carriage", 100.0, setup, "test")
