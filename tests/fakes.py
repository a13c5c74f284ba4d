"""Fakes for the controller's device protocols: each records every call, in order, in one
shared log (like ophyd-async's mock backends), instead of touching a wire."""

from __future__ import annotations

import dataclasses
from typing import Any

from drivers.safety_io import SafetyInputs, SafetyOutputs

AXES = ("spindle", "carriage", "torch_slide")
MFCS = ("mfc_ar", "mfc_o2", "mfc_n2", "mfc_sicl4", "mfc_dopant")


@dataclasses.dataclass(frozen=True)
class Call:
    device: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.device}.{self.method}"


class RecordingDevice:
    """Any method call is recorded and returns None; ``fail`` makes every call raise."""

    def __init__(self, name: str, log: list[Call], *, full_scale: float = 100.0) -> None:
        self.name = name
        self.full_scale_slpm = full_scale
        self.fail: Exception | None = None
        self._log = log

    def __getattr__(self, attr: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> None:
            self._log.append(Call(self.name, attr, args, kwargs))
            if self.fail is not None:
                raise self.fail
        return call


@dataclasses.dataclass
class RecordingMachine:
    log: list[Call]
    rf: Any
    safety_io: Any
    mfcs: dict[str, Any]
    axes: dict[str, Any]

    def calls(self, name: str) -> list[Call]:
        return [c for c in self.log if c.name == name]

    def names(self) -> list[str]:
        return [c.name for c in self.log]


def recording_machine() -> RecordingMachine:
    log: list[Call] = []
    return RecordingMachine(
        log=log, rf=RecordingDevice("rf", log), safety_io=RecordingDevice("safety_io", log),
        mfcs={n: RecordingDevice(n, log) for n in MFCS},
        axes={n: RecordingDevice(n, log) for n in AXES})


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
