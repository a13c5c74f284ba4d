"""The simulator's quiet fast paths: a device with nothing on the fault board skips its fault
handling (readings refreshed per sub-step, fault look-ups), and that must change nothing.

Two identical lines are stepped through the same commands, one with a fault on every device
that its physics never reads (a link fault: only the bus servers act on it), so that line's
devices take the full fault-handling path every sub-step; the plant and every reading must
stay equal to the float."""

from __future__ import annotations

from typing import Any

import pytest

from controller.config.line import (
    MfcConfig,
    RfGeneratorConfig,
    ServoAxisConfig,
    load_line_config,
)
from drivers.codecs import rf_generator_map as rf_map
from drivers.codecs import servo_map
from drivers.codecs.servo_map import AxisMode, Control, Oscillation
from simulators.faults import FaultBoard
from simulators.mfc import AlicatAsciiMfcSim, AlicatModbusMfcSim
from simulators.plant import Plant
from simulators.rf_generator import RfGeneratorSim
from simulators.servo_axis import ServoAxisSim

SUB_STEP_S = 0.1
Mfc = AlicatAsciiMfcSim | AlicatModbusMfcSim
Dynamic = RfGeneratorSim | Mfc | ServoAxisSim


class Wall:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """The dynamic devices and the plant of the demo line, stepped as LineSimulator does."""

    def __init__(self, *, fault_path: bool) -> None:
        line = load_line_config()
        self.wall = Wall()
        self.faults = FaultBoard(self.wall)
        self.plant = Plant.from_line(line, self.faults)
        self.devices: dict[str, Dynamic] = {}
        for name, config in line.devices.items():
            device: Dynamic
            if isinstance(config, MfcConfig):
                ascii_bus = line.buses[config.bus].protocol == "alicat-ascii"
                cls: type[Mfc] = AlicatAsciiMfcSim if ascii_bus else AlicatModbusMfcSim
                device = cls(name, config, self.plant, self.faults)
            elif isinstance(config, RfGeneratorConfig):
                device = RfGeneratorSim(name, config, self.plant, self.faults)
            elif isinstance(config, ServoAxisConfig):
                device = ServoAxisSim(name, config, self.plant, self.faults)
            else:
                continue
            self.devices[name] = device
        if fault_path:
            for name in [*self.devices, "plant"]:
                self.faults.inject(name, "corrupt")
        assert self.faults.quiet("rf") is not fault_path

    def step(self, dt_s: float) -> None:
        substeps = max(1, round(dt_s / SUB_STEP_S))
        for _ in range(substeps):
            for device in self.devices.values():
                device.step(dt_s / substeps, self.wall.now)
            self.plant.step(dt_s / substeps)
        self.wall.now += 0.01

    def axis(self, name: str) -> ServoAxisSim:
        device = self.devices[name]
        assert isinstance(device, ServoAxisSim)
        return device

    def command(self, axis: str, address: int, values: list[int]) -> None:
        assert self.axis(axis).write_holding(address, values) is None

    def readings(self) -> list[Any]:
        """The plant's and the devices' true state, unrounded, and what each would answer."""
        plant = self.plant
        seen: list[Any] = [plant.snapshot(), dict(plant.gas_flow_slpm), plant.rf_forward_kw,
                           plant.carriage_mm, plant.spindle_rpm, plant.torch_slide_mm,
                           plant.rod_diameter_mm, plant.rod_temperature_c, plant.deposited_g]
        for device in self.devices.values():
            if isinstance(device, ServoAxisSim):
                seen.append((device.position, device.velocity, device.strokes_done))
            elif isinstance(device, RfGeneratorSim):
                seen.append((device.forward_kw, device.fault_code))
            else:
                seen.append((device.core.flow_slpm, device.core.setpoint_slpm))
            if isinstance(device, AlicatAsciiMfcSim):
                seen.append(device.frame())
            else:
                seen.append(device.read_input(0, device.input_size))
        return seen


def _start_deposition(rig: Rig) -> None:
    """Gases, RF at power, the spindle turning, the carriage oscillating over the rod."""
    enable = [int(Control.ENABLE)]
    for axis in ("spindle", "carriage", "torch_slide"):
        rig.command(axis, servo_map.HR_CONTROL, enable)
    rig.command("spindle", servo_map.HR_MODE,
                servo_map.encode_motion_block(AxisMode.VELOCITY, 0.0, 30.0, 0.0))
    rig.command("spindle", servo_map.HR_CONTROL, [int(Control.ENABLE | Control.START)])
    for axis in ("carriage", "torch_slide"):
        rig.command(axis, servo_map.HR_CONTROL, [int(Control.ENABLE | Control.HOME)])
    while not (rig.axis("carriage").homed and rig.axis("torch_slide").homed):
        rig.step(0.8)
    line = load_line_config()
    geometry = line.geometry
    gap_mm = 30.0 + geometry.bait_rod_diameter_mm / 2 - geometry.coil_to_axis_at_slide_zero_mm
    rig.command("torch_slide", servo_map.HR_MODE, servo_map.encode_motion_block(
        AxisMode.POSITION_ABSOLUTE, gap_mm, line.axis("torch_slide").max_speed, 0.0))
    rig.command("torch_slide", servo_map.HR_CONTROL, [int(Control.ENABLE | Control.START)])
    block = Oscillation(geometry.turning_point_a_mm, geometry.turning_point_b_mm,
                        speed=3000.0, acceleration=0.0, strokes=0)
    rig.command("carriage", servo_map.HR_OSC_FIRST, servo_map.encode_oscillation_block(block))
    rig.command("carriage", servo_map.HR_CONTROL, [int(Control.ENABLE | Control.OSCILLATE)])
    _set_flows(rig, {"mfc_ar": 30.0, "mfc_o2": 80.0, "mfc_n2": 30.0, "mfc_sicl4": 2.6,
                     "mfc_dopant": 0.3})
    rf = rig.devices["rf"]
    assert isinstance(rf, RfGeneratorSim)
    assert rf.write_holding(rf_map.HR_POWER_SETPOINT, [rf_map.encode_power_kw(50.0)]) is None
    assert rf.write_holding(rf_map.HR_RF_COMMAND, [rf_map.RF_COMMAND_ON]) is None


def _set_flows(rig: Rig, slpm: dict[str, float]) -> None:
    for name, value in slpm.items():
        device = rig.devices[name]
        assert isinstance(device, Mfc)
        device.core.set_setpoint(value)


@pytest.mark.parametrize("dt_s", [0.1, 0.8, 2.0])
def test_quiet_devices_step_exactly_as_the_fault_path(dt_s: float) -> None:
    quiet, faulted = Rig(fault_path=False), Rig(fault_path=True)
    for rig in (quiet, faulted):
        _start_deposition(rig)
    assert quiet.readings() == faulted.readings()
    steps = round(400 / dt_s)  # 400 process seconds: ignition, strokes, growth
    for step in range(steps):
        if step == steps // 2:  # flows on their way to new setpoints again
            for rig in (quiet, faulted):
                _set_flows(rig, {"mfc_o2": 60.0, "mfc_sicl4": 3.1, "mfc_dopant": 0.1})
        quiet.step(dt_s)
        faulted.step(dt_s)
        assert quiet.readings() == faulted.readings()
    assert quiet.plant.plasma_lit
    assert quiet.axis("carriage").strokes_done > 2
    assert quiet.plant.deposited_g > 0


def test_quiet_tracks_the_board() -> None:
    wall = Wall()
    board = FaultBoard(wall)
    assert board.quiet("rf")
    board.inject("rf", "drift", duration_s=1.0)
    board.inject("rf", "stuck")
    board.inject("rf", "stuck")  # replaces the first: still two faults
    assert not board.quiet("rf")
    assert board.quiet("mfc_ar")
    board.clear("rf", "stuck")
    assert not board.quiet("rf")
    wall.now = 1.0
    assert board.active("rf", "drift") is None  # expired: leaves the board
    assert board.quiet("rf")
    board.inject("mfc_ar", "silent")
    board.inject("mfc_o2", "silent")
    assert board.clear() == 2
    assert board.quiet("mfc_ar")
    assert board.quiet("mfc_o2")
