"""Typed fakes for the controller's device protocols (``controller/machine/protocols.py``).

Like ophyd-async's mock backends: each fake records every call, in order, in one log shared by
the whole machine, instead of touching a wire, and answers reads with a value the test sets.
A test may also

- make a device fail (``fail``: every call raises it, after being recorded),
- make a device not answer (``stall``: every call waits for this event, after being recorded),
- react to writes, as a plant would (``RecordingMachine.on_call``: called with every call as
  it is recorded; e.g. light the plasma in the telemetry when the RF goes on).

``RecordingMachine`` is a ``Machine``, so the real ``Actuators`` and pollers take it as it is."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller.config.line import AXIS_NAMES, MFC_NAMES, LineConfig, load_line_config
from controller.machine.devices import Machine
from controller.machine.protocols import (
    DiameterGaugeLike,
    MassFlowControllerLike,
    RfGeneratorLike,
    SafetyIoLike,
    ServoAxisLike,
)
from drivers.codecs.servo_map import AxisMode
from drivers.diameter_gauge import GaugeReading
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.safety_io import SafetyInputs, SafetyOutputs
from drivers.servo_axis import AxisStatus

AXES = AXIS_NAMES
MFCS = MFC_NAMES

CallListener = Callable[["Call"], None]


@dataclasses.dataclass(frozen=True)
class Call:
    """One call on a fake: required arguments positional, keyword-only ones by name (as the
    single writer passes them)."""

    device: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.device}.{self.method}"


class RecordingDevice:
    """What every fake shares: the name, the shared log, ``fail`` and ``stall``."""

    def __init__(self, name: str, log: list[Call],
                 listeners: list[CallListener] | None = None) -> None:
        self.name = name
        self.fail: Exception | None = None
        self.stall: asyncio.Event | None = None
        self._log = log
        self._listeners = listeners if listeners is not None else []

    async def _record(self, method: str, *args: Any, **kwargs: Any) -> None:
        call = Call(self.name, method, args, kwargs)
        self._log.append(call)
        for listener in list(self._listeners):
            listener(call)
        if self.stall is not None:
            await self.stall.wait()
        if self.fail is not None:
            raise self.fail


class FakeRfGenerator(RecordingDevice):
    def __init__(self, name: str, log: list[Call],
                 listeners: list[CallListener] | None = None) -> None:
        super().__init__(name, log, listeners)
        self.status = RfStatus(0.0, 0.0, 0.0, True, False, False, False, False, 0, False)

    async def set_power_kw(self, kw: float, *, urgent: bool = False) -> None:
        await self._record("set_power_kw", kw, urgent=urgent)

    async def set_ramp_kw_s(self, rate: float) -> None:
        await self._record("set_ramp_kw_s", rate)

    async def rf_on(self) -> None:
        await self._record("rf_on")

    async def rf_off(self, *, urgent: bool = False) -> None:
        await self._record("rf_off", urgent=urgent)

    async def reset_fault(self) -> None:
        await self._record("reset_fault")

    async def read(self) -> RfStatus:
        await self._record("read")
        return self.status


class FakeMfc(RecordingDevice):
    def __init__(self, name: str, log: list[Call], listeners: list[CallListener] | None = None,
                 *, full_scale: float = 100.0) -> None:
        super().__init__(name, log, listeners)
        self.full_scale_slpm = full_scale
        self.reading = MfcReading(14.7, 25.0, 0.0, 0.0, 0.0, "N2", frozenset())

    async def set_flow_slpm(self, slpm: float, *, urgent: bool = False) -> None:
        await self._record("set_flow_slpm", slpm, urgent=urgent)

    async def read(self) -> MfcReading:
        await self._record("read")
        return self.reading


class FakeServoAxis(RecordingDevice):
    def __init__(self, name: str, log: list[Call],
                 listeners: list[CallListener] | None = None) -> None:
        super().__init__(name, log, listeners)
        self.status = AxisStatus(True, False, True, True, False, False, False, 0, 0.0, 0.0,
                                 AxisMode.NONE)

    async def enable(self) -> None:
        await self._record("enable")

    async def disable(self) -> None:
        await self._record("disable")

    async def set_velocity(self, speed: float, *, urgent: bool = False) -> None:
        await self._record("set_velocity", speed, urgent=urgent)

    async def move_absolute(self, position_mm: float, speed: float,
                            acceleration: float | None = None, *, urgent: bool = False) -> None:
        extra = () if acceleration is None else (acceleration,)
        await self._record("move_absolute", position_mm, speed, *extra, urgent=urgent)

    async def move_relative(self, distance_mm: float, speed: float,
                            acceleration: float | None = None) -> None:
        extra = () if acceleration is None else (acceleration,)
        await self._record("move_relative", distance_mm, speed, *extra)

    async def jog(self, direction: int, speed: float) -> None:
        await self._record("jog", direction, speed)

    async def oscillate(self, first_mm: float, second_mm: float, speed: float, strokes: int = 0,
                        acceleration: float | None = None, *, urgent: bool = False) -> None:
        extra = () if acceleration is None else (acceleration,)
        await self._record("oscillate", first_mm, second_mm, speed, strokes, *extra,
                           urgent=urgent)

    async def set_oscillation_speed(self, speed: float, *, urgent: bool = False) -> None:
        await self._record("set_oscillation_speed", speed, urgent=urgent)

    async def set_oscillation_strokes(self, strokes: int, *, urgent: bool = False) -> None:
        await self._record("set_oscillation_strokes", strokes, urgent=urgent)

    async def home(self) -> None:
        await self._record("home")

    async def stop(self, *, urgent: bool = False) -> None:
        await self._record("stop", urgent=urgent)

    async def reset_alarm(self) -> None:
        await self._record("reset_alarm")

    async def read(self) -> AxisStatus:
        await self._record("read")
        return self.status

    async def configure_comm_watchdog(self, timeout_s: float,
                                      fallback_speed: float = 0.0) -> None:
        await self._record("configure_comm_watchdog", timeout_s, fallback_speed)


class FakeSafetyIo(RecordingDevice):
    def __init__(self, name: str, log: list[Call],
                 listeners: list[CallListener] | None = None, owner_id: int = 0x0C0D) -> None:
        super().__init__(name, log, listeners)
        self.owner_id = owner_id
        self.inputs = healthy_inputs()

    async def read(self) -> SafetyInputs:
        await self._record("read")
        return self.inputs

    async def write_outputs(self, outputs: SafetyOutputs, *, urgent: bool = False) -> None:
        await self._record("write_outputs", outputs, urgent=urgent)

    async def heartbeat(self) -> None:
        """A beat on a free line claims it, as the PLC does (a test sets another owner)."""
        await self._record("heartbeat")
        if self.inputs.line_owner == 0:
            self.inputs = dataclasses.replace(self.inputs, line_owner=self.owner_id)

    async def beat_and_read(self) -> SafetyInputs:
        """One exchange on the wire (FC 23): the beat, then the read, as the PLC does them."""
        await self.heartbeat()
        return await self.read()

    async def reset_heartbeat_latch(self) -> None:
        await self._record("reset_heartbeat_latch")


class FakeDiameterGauge(RecordingDevice):
    def __init__(self, name: str, log: list[Call],
                 listeners: list[CallListener] | None = None) -> None:
        super().__init__(name, log, listeners)
        self.reading = GaugeReading(30.0, True)

    async def read(self) -> GaugeReading:
        await self._record("read")
        return self.reading


if TYPE_CHECKING:  # each fake is its protocol (mypy checks these assignments)
    _rf: RfGeneratorLike = FakeRfGenerator("rf", [])
    _mfc: MassFlowControllerLike = FakeMfc("mfc", [])
    _axis: ServoAxisLike = FakeServoAxis("axis", [])
    _io: SafetyIoLike = FakeSafetyIo("safety_io", [])
    _gauge: DiameterGaugeLike = FakeDiameterGauge("gauge", [])


@dataclasses.dataclass
class RecordingMachine(Machine):
    """A ``Machine`` of fakes sharing one call log."""

    rf: FakeRfGenerator
    safety_io: FakeSafetyIo
    mfcs: dict[str, FakeMfc]  # type: ignore[assignment]  # the fakes, not the protocol
    axes: dict[str, FakeServoAxis]  # type: ignore[assignment]
    gauge: FakeDiameterGauge
    log: list[Call] = dataclasses.field(default_factory=list)
    listeners: list[CallListener] = dataclasses.field(default_factory=list)

    def calls(self, name: str) -> list[Call]:
        return [c for c in self.log if c.name == name]

    def names(self) -> list[str]:
        return [c.name for c in self.log]

    def writes(self) -> list[Call]:
        """Every call but the reads."""
        return [c for c in self.log if c.method != "read"]

    def on_call(self, listener: CallListener) -> None:
        """Call ``listener`` with every call as it is recorded (a plant's reaction)."""
        self.listeners.append(listener)


@functools.cache
def default_line() -> LineConfig:
    """The demo line (deploy/line-sim.yaml), read once."""
    return load_line_config()


def recording_machine(line: LineConfig | None = None) -> RecordingMachine:
    """Fakes for every device of the line; MFC full scales from ``line`` when given, else
    100 slpm each."""
    log: list[Call] = []
    listeners: list[CallListener] = []
    config = line or default_line()

    def full_scale(name: str) -> float:
        return 100.0 if line is None else line.mfc(name).full_scale_slpm

    return RecordingMachine(
        line=config, transports={},
        rf=FakeRfGenerator("rf", log, listeners),
        safety_io=FakeSafetyIo("safety_io", log, listeners),
        mfcs={n: FakeMfc(n, log, listeners, full_scale=full_scale(n)) for n in MFCS},
        axes={n: FakeServoAxis(n, log, listeners) for n in AXES},
        gauge=FakeDiameterGauge("diameter_gauge", log, listeners),
        log=log, listeners=listeners)


def healthy_inputs(**changes: Any) -> SafetyInputs:
    """A safety PLC's inputs on a healthy, idle line."""
    values: dict[str, Any] = {
        "estop_ok": True, "doors_closed": True, "scrubber_ready": True,
        "safety_relay_ok": True, "rf_enable": False, "plasma_optical": False,
        "heartbeat_ok": True, "gas_supply_ok": True, "water_flow_l_min": 25.0,
        "water_temp_c": 22.0, "exhaust_draft_pa": -50.0, "supply_ar_bar": 5.0,
        "supply_o2_bar": 5.0, "supply_n2_bar": 5.0, "supply_sicl4_bar": 5.0,
        "supply_dopant_bar": 5.0, "gas_detector_ppm": 0.0, "rod_temperature_c": 25.0,
        "room_o2_pct": 20.9, "heartbeat_latched": False, "outputs_effective": SafetyOutputs(),
    }
    values.update(changes)
    return SafetyInputs(**values)
