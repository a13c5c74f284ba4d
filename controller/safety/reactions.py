"""Drive the machine into a posture of ``safe_state``: RF first, then everything else at once.

The posture's targets are chosen inside the present envelope (rule 10): a purge only where
purging is allowed, the torch slide at setup speed with a door open and not at all in
maintenance mode (someone may be at the machine), the spindle at cooling speed only while the
rod is hot. Each write may fail (that device may be the very one that was lost); a failure is
collected, never allowed to stop the other writes. When the RF generator cannot be told to
switch off, the caller stops the heartbeat so the safety PLC drops the RF enable by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field

import structlog

from controller.config.line import PRECURSORS, PROCESS_GASES, LineConfig
from controller.machine.telemetry import Telemetry
from controller.safety.envelope import Envelope
from controller.safety.postures import Carriage, Gases, Posture, Rf, Spindle
from controller.safety.writer import Actuators

log = structlog.get_logger(__name__)



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


@dataclass
class LaunchedPosture:
    """A posture whose writes are already under way, each its own task: they take their buses
    at the event loop's next turn, whoever awaits them and whenever."""

    posture: Posture
    jobs: dict[str, asyncio.Future[None]]


def launch_posture(
    act: Actuators,
    posture: Posture,
    line: LineConfig,
    telemetry: Telemetry,
    *,
    source: str,
    idle_power_kw: float | None = None,
    move_torch_slide: bool = True,
    env: Envelope | None = None,
) -> LaunchedPosture:
    """Start every write of the posture without awaiting anything, RF first. A reaction calls
    this from the safety cycle itself, so the RF-off and the PLC's writes are on their way
    one event-loop turn after the judgement (rule 7: within 1 ms), not after the reaction's
    own task has been scheduled and has scheduled them in turn. ``env``: the envelope the
    posture is chosen in, when not the present one (a trip's, for the state it is entering)."""
    # RF first: its frame goes out before any other. Nothing waits for its answer: the PLC's
    # RF permit, the valves and everything else follow at once (rule 7), so a lost RF link
    # never delays the rest of the posture.
    rf = _rf_job(act, posture, line, source, idle_power_kw)
    env = env or act.envelope()
    jobs: dict[str, Awaitable[None]] = {} if rf is None else {"rf": rf}
    gas_jobs = _gas_jobs(act, posture, line, env, source)
    # The PLC's outputs (its RF permit, the valves) right after the generator's RF off: each
    # job's first turn builds and sends its frame, and the MFCs' five would come first.
    plc = gas_jobs.pop("safety_io", None)
    if plc is not None:
        jobs["safety_io"] = plc
    jobs.update(gas_jobs)
    if posture.spindle is not Spindle.UNPOWERED:
        jobs.update(_axis_jobs(act, posture, line=line, telemetry=telemetry, env=env,
                               source=source, move_torch_slide=move_torch_slide))
    return LaunchedPosture(posture, {name: asyncio.ensure_future(job)
                                     for name, job in jobs.items()})


async def settle_posture(launched: LaunchedPosture) -> PostureResult:
    """Wait for every write of a launched posture; each failure is collected, none stops the
    others."""
    posture = launched.posture
    result = PostureResult(posture.name)
    names = list(launched.jobs)
    outcomes = await asyncio.gather(*launched.jobs.values(), return_exceptions=True)
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            result.failures[name] = str(outcome)
    if "rf" in result.failures and posture.rf is Rf.OFF:
        result.rf_off_confirmed_by_write = False
    if result.failures:
        log.warning("posture.incomplete", posture=posture.name, failures=result.failures)
    return result


def _rf_job(act: Actuators, posture: Posture, line: LineConfig, source: str,
            idle_power_kw: float | None) -> Awaitable[None] | None:
    if posture.rf is Rf.OFF:
        return act.rf_off(source, urgent=True)
    if posture.rf is Rf.IDLE:
        return act.set_power_kw(idle_power_kw or line.supervision.idle_power_kw, source,
                                urgent=True)
    return None


def _gas_jobs(act: Actuators, posture: Posture, line: LineConfig, env: Envelope,
              source: str) -> dict[str, Awaitable[None]]:
    jobs: dict[str, Awaitable[None]] = {}
    if posture.precursors_off:
        for name in PRECURSORS:
            jobs[name] = act.set_flow_slpm(name, 0.0, source, urgent=True)
    outputs: dict[str, bool] = {}
    if posture.precursor_valve_closed:
        outputs["precursor_valve"] = False
    if posture.heaters_off:
        outputs["heater_a"] = False
        outputs["heater_b"] = False
    if posture.rf is Rf.OFF:
        outputs["rf_permit"] = False  # in the same cycle as the generator's RF off (rule 1)
    gases = posture.gases
    if gases is Gases.PURGE and not env.master_valve_allowed:
        gases = Gases.OFF  # purging here would push gas into the room (rule 1)
    if gases is Gases.OFF:
        outputs["gas_master_valve"] = False
        for name in PROCESS_GASES:
            jobs[name] = act.set_flow_slpm(name, 0.0, source, urgent=True)
    elif gases is Gases.PURGE:
        for name in PROCESS_GASES:
            purge = min(line.mfc(name).purge_slpm, env.flow_max_slpm.get(name, 0.0))
            jobs[name] = act.set_flow_slpm(name, purge, source, urgent=True)
    if outputs:
        jobs["safety_io"] = act.set_outputs(source, urgent=True, **outputs)
    return jobs


def _axis_jobs(act: Actuators, posture: Posture, *, line: LineConfig, telemetry: Telemetry,
               env: Envelope, source: str, move_torch_slide: bool,
               ) -> dict[str, Awaitable[None]]:
    jobs: dict[str, Awaitable[None]] = {}
    carriage = telemetry.axes.get("carriage")
    carriage_speed = min(line.supervision.carriage_reposition_mm_min,
                         env.axis_max_speed.get("carriage", 0.0))
    if posture.carriage is Carriage.STOP:
        jobs["carriage"] = act.stop_axis("carriage", source, urgent=True)
    elif carriage_speed <= 0:
        pass  # no axis may move now
    elif posture.carriage is Carriage.NEAREST_TURNING_POINT and carriage is not None:
        target = nearest_turning_point(line, carriage.position_mm)
        jobs["carriage"] = act.move_axis("carriage", target, carriage_speed, source)
    elif posture.carriage is Carriage.PARK:
        park = line.axis("carriage").park_position_mm or 0.0
        jobs["carriage"] = act.move_axis("carriage", park, carriage_speed, source)
    slide_speed = min(line.supervision.torch_slide_mm_min,
                      env.axis_max_speed.get("torch_slide", 0.0))
    slide_park = line.axis("torch_slide").park_position_mm
    if posture.torch_slide_park and move_torch_slide and slide_park is not None \
            and slide_speed > 0:
        jobs["torch_slide"] = act.move_axis("torch_slide", slide_park, slide_speed, source)
    if posture.spindle is Spindle.COOLING and env.rod_hot and env.spindle_min_rpm > 0:
        jobs["spindle"] = act.spindle_rpm(env.spindle_min_rpm, source, urgent=True)
    return jobs
