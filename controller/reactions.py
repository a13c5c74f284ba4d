"""Drive the machine into a posture of ``safe_state``: RF first, then everything else at once.

Each write may fail (that device may be the very one that was lost); a failure is collected,
never allowed to stop the other writes. When the RF generator cannot be told to switch off,
the caller stops the heartbeat so the safety PLC drops the RF enable by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field

import structlog

from controller.actuators import Actuators
from controller.config import LineConfig
from controller.safe_state import Carriage, Gases, Posture, Rf, Spindle
from controller.telemetry import Telemetry

log = structlog.get_logger(__name__)

PROCESS_GASES = ("mfc_ar", "mfc_o2", "mfc_n2")
PRECURSORS = ("mfc_sicl4", "mfc_dopant")


@dataclass
class PostureResult:
    posture: str
    rf_off_confirmed_by_write: bool = True
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failures


def nearest_turning_point(line: LineConfig, position_mm: float) -> float:
    a, b = line.geometry.turning_point_a_mm, line.geometry.turning_point_b_mm
    return a if abs(position_mm - a) <= abs(position_mm - b) else b


async def apply_posture(
    act: Actuators,
    posture: Posture,
    line: LineConfig,
    telemetry: Telemetry,
    *,
    source: str,
    idle_power_kw: float | None = None,
) -> PostureResult:
    result = PostureResult(posture.name)
    # 1. RF first: the first write, ahead of everything else.
    try:
        if posture.rf is Rf.OFF:
            await act.rf_off(source)
        elif posture.rf is Rf.IDLE:
            await act.set_power_kw(idle_power_kw or line.supervision.idle_power_kw, source)
    except Exception as exc:  # the RF link may be the lost one
        result.rf_off_confirmed_by_write = posture.rf is not Rf.OFF
        result.failures["rf"] = str(exc)
    # 2. Everything else at once.
    jobs: dict[str, Awaitable[None]] = {}
    if posture.precursors_off:
        for name in PRECURSORS:
            jobs[name] = act.set_flow_slpm(name, 0.0, source)
    outputs: dict[str, bool] = {}
    if posture.precursor_valve_closed:
        outputs["precursor_valve"] = False
    if posture.heaters_off:
        outputs["heater_a"] = False
        outputs["heater_b"] = False
    if posture.gases is Gases.OFF:
        outputs["gas_master_valve"] = False
        for name in PROCESS_GASES:
            jobs[name] = act.set_flow_slpm(name, 0.0, source)
    elif posture.gases is Gases.PURGE:
        for name in PROCESS_GASES:
            jobs[name] = act.set_flow_slpm(name, line.mfc(name).purge_slpm, source)
    if outputs:
        jobs["safety_io"] = act.set_outputs(source, **outputs)
    if posture.spindle is not Spindle.UNPOWERED:
        carriage = telemetry.axes.get("carriage")
        if posture.carriage is Carriage.STOP:
            jobs["carriage"] = act.stop_axis("carriage", source)
        elif posture.carriage is Carriage.NEAREST_TURNING_POINT and carriage is not None:
            target = nearest_turning_point(line, carriage.position_mm)
            jobs["carriage"] = act.move_axis(
                "carriage", target, line.supervision.carriage_reposition_mm_min, source
            )
        elif posture.carriage is Carriage.PARK:
            park = line.axis("carriage").park_position_mm or 0.0
            jobs["carriage"] = act.move_axis(
                "carriage", park, line.supervision.carriage_reposition_mm_min, source
            )
        if posture.torch_slide_park:
            slide_park = line.axis("torch_slide").park_position_mm
            if slide_park is not None:
                jobs["torch_slide"] = act.move_axis(
                    "torch_slide", slide_park, line.supervision.torch_slide_mm_min, source
                )
        if posture.spindle is Spindle.COOLING:
            cooling = line.axis("spindle").cooling_speed_rpm or 10.0
            jobs["spindle"] = act.spindle_rpm(cooling, source)
    names = list(jobs)
    outcomes = await asyncio.gather(*jobs.values(), return_exceptions=True)
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            result.failures[name] = str(outcome)
    if result.failures:
        log.warning("posture.incomplete", posture=posture.name, failures=result.failures)
    return result
