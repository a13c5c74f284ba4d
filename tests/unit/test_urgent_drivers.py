"""Every write the safety reaction uses passes ``urgent`` down to its bus's transport (the
ordering itself is tested at the wire: tests/integration/test_transports.py and the device
tests); everything else stays an ordinary request."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.mfc import AlicatAsciiMfc, AlicatModbusMfc
from drivers.rf_generator import RfGenerator
from drivers.safety_io import SafetyIo, SafetyOutputs
from drivers.servo_axis import ServoAxis


class RecordingModbus:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def write_register(self, unit: int, address: int, value: int, *,
                             urgent: bool = False) -> None:
        self.calls.append(("write_register", urgent))

    async def write_registers(self, unit: int, address: int, values: list[int], *,
                              urgent: bool = False) -> None:
        self.calls.append(("write_registers", urgent))

    async def write_sequence(self, unit: int, writes: Any, *, urgent: bool = False) -> None:
        self.calls.append(("write_sequence", urgent))


class RecordingAscii:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def request(self, line: str, *, reply: bool = True, urgent: bool = False) -> str:
        self.calls.append((line, urgent))
        return "B +014.70 +025.00 +000.00 +000.00 005.00 O2"


@pytest.mark.parametrize("urgent", [True, False])
async def test_rf_generator(urgent: bool) -> None:
    bus = RecordingModbus()
    rf = RfGenerator(bus, 1, max_power_kw=80, max_slew_kw_s=5)  # type: ignore[arg-type]
    await rf.rf_off(urgent=urgent)
    await rf.set_power_kw(10.0, urgent=urgent)
    await rf.rf_off()
    assert bus.calls == [("write_register", urgent)] * 2 + [("write_register", False)]


@pytest.mark.parametrize("urgent", [True, False])
async def test_safety_io(urgent: bool) -> None:
    bus = RecordingModbus()
    io = SafetyIo(bus, 1)  # type: ignore[arg-type]
    await io.write_outputs(SafetyOutputs(exhaust_fan=True), urgent=urgent)
    await io.heartbeat()
    assert bus.calls == [("write_register", urgent), ("write_registers", False)]  # beat: FC 16


@pytest.mark.parametrize("urgent", [True, False])
async def test_servo_axis(urgent: bool) -> None:
    bus = RecordingModbus()
    axis = ServoAxis(bus, 2, name="carriage", motion="linear",  # type: ignore[arg-type]
                     max_position_mm=1200, max_speed=3000, max_acceleration=500)
    await axis.stop(urgent=urgent)
    await axis.set_velocity(100.0, urgent=urgent)
    await axis.move_absolute(600.0, 3000.0, urgent=urgent)
    assert bus.calls == [
        ("write_register", urgent), ("write_sequence", urgent), ("write_sequence", urgent),
    ]


@pytest.mark.parametrize("urgent", [True, False])
async def test_mfcs(urgent: bool) -> None:
    modbus = RecordingModbus()
    sicl4 = AlicatModbusMfc(modbus, 1, name="mfc_sicl4",  # type: ignore[arg-type]
                            full_scale_slpm=10.0, gas_number=255)
    await sicl4.set_flow_slpm(0.0, urgent=urgent)
    assert modbus.calls == [("write_registers", urgent)]
    line = RecordingAscii()
    o2 = AlicatAsciiMfc(line, "B", name="mfc_o2",  # type: ignore[arg-type]
                        full_scale_slpm=200.0, gas_number=11)
    await o2.set_flow_slpm(5.0, urgent=urgent)
    assert line.calls == [("BS5.00", urgent)]
