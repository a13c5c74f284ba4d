"""The recipe executor: runs a ``Plan``'s operations on the machine, pass by pass.

It only commands through ``Actuators`` and only observes through ``Telemetry`` (kept fresh by
the supervisor's pollers); it never decides about safety, which is the supervisor's job: the
supervisor cancels it on hold, suspend, stop or trip and starts it again with ``resume=True``,
which re-establishes the process (re-ignites if needed, brings power and gases back) and
continues from the start of the interrupted pass."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import structlog

from controller.config.line import LineConfig
from controller.machine.telemetry import Telemetry
from controller.recipes.plan import (
    CooldownOp,
    DepositOp,
    DwellOp,
    IgniteOp,
    LayerOp,
    Op,
    Plan,
    PurgeOp,
    RampOp,
    Tolerances,
)
from controller.run.cursor import Cursor, PassSummary
from controller.run.deposition import Deposition
from controller.run.growth_control import Outlook
from controller.run.process_clock import ProcessClock
from controller.run.step_errors import IgnitionFailed, StepFailed
from controller.safety.writer import Actuators

log = structlog.get_logger(__name__)

__all__ = ["Cursor", "Executor", "IgnitionFailed", "PassSummary", "StepFailed"]

POLL_S = 0.02  # how often a wait re-reads the telemetry (wall)
# ... and at least this often in process time: at x400, 20 ms of wall time is 8 process s,
# for which a step's gases would flow on past the condition that ends it (the dry run).
WAIT_PROCESS_S = 0.8


PassListener = Callable[[PassSummary, Cursor], Awaitable[None]]
ProgressListener = Callable[[dict[str, Any]], None]
OutlookListener = Callable[[Outlook | None], None]


class Executor:
    def __init__(
        self,
        plan: Plan,
        line: LineConfig,
        act: Actuators,
        telemetry: Telemetry,
        clock: ProcessClock,
        *,
        cursor: Cursor | None = None,
        on_pass: PassListener | None = None,
        on_progress: ProgressListener | None = None,
        on_outlook: OutlookListener | None = None,
    ) -> None:
        self.plan = plan
        self.line = line
        self.act = act
        self.telemetry = telemetry
        self.clock = clock
        self.cursor = cursor or Cursor()
        self.on_pass = on_pass
        self.on_progress = on_progress
        self.on_outlook = on_outlook
        self.outlook: Outlook | None = None  # set while the loop cannot land the plan
        self.plasma_expected = False
        self.trim_power_kw = 0.0
        self.trim_traverse_pct = 0.0
        self.current_op = "idle"
        self.stop_requested = False
        self.reignite_attempts: int | None = None  # set by the supervisor for re-ignition
        self._log = log.bind(recipe=plan.name)

    # -- what the supervisor may change (only through these) -------------------------------
    def stop(self) -> None:
        """Seen at the executor's next wait, whatever happens to its task's cancellation."""
        self.stop_requested = True

    def release(self, *, reignite_attempts: int | None = None) -> None:
        """Ready to run again (resume, unhold, or the stop's own cool-down); with
        ``reignite_attempts``, a re-ignition uses that many attempts."""
        self.stop_requested = False
        if reignite_attempts is not None:
            self.reignite_attempts = reignite_attempts

    def set_trim(self, *, power_kw: float | None = None,
                 traverse_pct: float | None = None) -> None:
        """Operator trims, like a feed override: power at once, traverse from the next pass."""
        if power_kw is not None:
            self.trim_power_kw = power_kw
        if traverse_pct is not None:
            self.trim_traverse_pct = traverse_pct

    def add_passes(self, layer: int, passes: int) -> None:
        """Operator's extra passes for a layer (within the recipe's extra_passes), from the
        layer's next pass; the drive is told at its next reversal."""
        self.cursor.add_extra(layer, passes)

    # -- observations ----------------------------------------------------------------------
    @property
    def plasma_lit(self) -> bool:
        rf, io = self.telemetry.rf, self.telemetry.safety
        return bool((rf is not None and rf.plasma_lit) or (io is not None and io.plasma_optical))

    def measured_diameter(self) -> float | None:
        gauge = self.telemetry.gauge
        if self.telemetry.link_ok("diameter_gauge") and gauge is not None and gauge.valid:
            return gauge.diameter_mm
        return None

    def _flow(self, device: str) -> float | None:
        reading = self.telemetry.mfcs.get(device)
        return None if reading is None else reading.mass_slpm

    def check_stop(self) -> None:
        # Belt and braces for task cancellation, which Python 3.11's wait_for can swallow.
        if self.stop_requested:
            raise asyncio.CancelledError

    async def _until(self, condition: Callable[[], bool], process_s: float, what: str) -> None:
        deadline = time.monotonic() + self.clock.wall_budget(process_s)
        self.check_stop()
        while not condition():
            self.check_stop()
            if time.monotonic() > deadline:
                raise StepFailed(self.current_op, f"timed out waiting for {what}")
            await asyncio.sleep(self._wait_period_s)

    @property
    def _wait_period_s(self) -> float:
        return min(POLL_S, WAIT_PROCESS_S / self.clock.time_scale)

    def progress(self, **extra: Any) -> None:
        if self.on_progress is not None:
            self.on_progress({"op": self.current_op, **asdict(self.cursor), **extra})

    # -- the run ---------------------------------------------------------------------------
    async def run(
        self, *, resume: bool = False, on_resumed: Callable[[], None] | None = None
    ) -> None:
        steps = self.plan.steps
        while self.cursor.step < len(steps):
            self.check_stop()
            op = steps[self.cursor.step]
            if resume:
                await self._resume_prelude(self.cursor.step)
                resume = False
                if on_resumed is not None:
                    on_resumed()
            await self._do(op)
            self.cursor.step += 1
            self.cursor.layer = 0
            self.cursor.layer_pass = 0
            self.cursor.extra_passes = None  # they belonged to that step's layers
        self.current_op = "done"

    async def _do(self, op: Op) -> None:
        self.current_op = type(op).__name__.removesuffix("Op").lower()
        self._log.info("executor.step", step=self.cursor.step, op=self.current_op)
        self.progress()
        if isinstance(op, PurgeOp):
            await self._purge(op)
        elif isinstance(op, IgniteOp):
            await self._ignite(op)
        elif isinstance(op, RampOp):
            await self._ramp(op)
        elif isinstance(op, DepositOp):
            await self._deposit(op)
        elif isinstance(op, DwellOp):
            if op.spindle_rpm is not None:
                await self.act.spindle_rpm(op.spindle_rpm, "recipe")
            await self.clock.sleep(op.duration_s)
        else:
            await self.cool_down(op)

    async def _resume_prelude(self, index: int) -> None:
        """Bring the process back to where the interrupted step expects it."""
        self.current_op = "resume"
        op = self.plan.steps[index]
        # A reading taken before the RF went off may still say lit: with the RF commanded off
        # the plasma cannot be burning, whatever the last reading.
        lit = self.act.commanded.rf_on and self.plasma_lit
        if self.plan.needs_plasma(index) and not lit:
            ignite = self.plan.ignition_before(index)
            if ignite is None:
                raise StepFailed("resume", "no ignition step to re-light the plasma with")
            await self._ignite(ignite)
        if isinstance(op, DepositOp):
            # Power and gases back before the carriage returns to the pass start; the
            # deposition itself brings the precursors back.
            layer = op.layers[min(self.cursor.layer, len(op.layers) - 1)]
            await self._establish_plasma(layer, ramp_s=30.0, tolerances=op.tolerances)

    # -- steps -----------------------------------------------------------------------------
    async def _set_gases(self, ar: float, o2: float, n2: float) -> None:
        """Make before break: the flows that rise are set before those that fall, so switching
        the plasma from argon to oxygen never starves it in between (the writes share a bus,
        one after the other)."""
        targets = {"mfc_ar": ar, "mfc_o2": o2, "mfc_n2": n2}
        now = self.act.commanded.flows_slpm
        rising = {d: v for d, v in targets.items() if v >= now.get(d, 0.0)}
        falling = {d: v for d, v in targets.items() if d not in rising}
        for group in (rising, falling):
            await asyncio.gather(*(self.act.set_flow_slpm(d, v, "recipe")
                                   for d, v in group.items()))

    async def _purge(self, op: PurgeOp) -> None:
        await self.act.set_outputs("recipe", gas_master_valve=True, exhaust_fan=True,
                                   precursor_valve=False)
        await self._set_gases(op.ar_slpm, op.o2_slpm, op.n2_slpm)
        if op.spindle_rpm > 0:
            await self.act.spindle_rpm(op.spindle_rpm, "recipe")
        await self.clock.sleep(op.duration_s)

    async def _ignite(self, op: IgniteOp) -> None:
        sup = self.line.supervision
        # Until it lights, no plasma is expected: an unlit torch while igniting is no
        # flame-out (the envelope would cut the argon and the RF).
        self.plasma_expected = False
        await self.act.set_outputs("recipe", gas_master_valve=True, exhaust_fan=True,
                                   precursor_valve=False)
        await self.act.spindle_rpm(op.spindle_rpm, "recipe")
        attempts = op.attempts if self.reignite_attempts is None else self.reignite_attempts
        for attempt in range(1, attempts + 1):
            self.current_op = "ignite"
            self.progress(attempt=attempt)
            await self._set_gases(op.ar_slpm, op.o2_slpm, op.n2_slpm)
            await self._until(self._argon_settled(op), op.tolerances.settle_s,
                              "argon flow to settle")
            await self.act.set_ramp_kw_s(op.ramp_kw_s, "recipe")
            await self.act.set_power_kw(op.power_kw, "recipe")
            await self.act.rf_on("recipe")
            try:
                await self._until(lambda: self.plasma_lit, op.timeout_s, "the plasma to light")
            except StepFailed:
                self._log.warning("executor.ignition_failed", attempt=attempt)
                await self.act.rf_off("recipe")
                await self.clock.sleep(sup.purge_before_reignite_s)
                continue
            self.plasma_expected = True
            self._log.info("executor.plasma_lit", attempt=attempt)
            return
        raise IgnitionFailed("ignite", f"no ignition after {attempts} attempt(s)")

    def _argon_settled(self, op: IgniteOp) -> Callable[[], bool]:
        tolerance = op.tolerances.flow_pct / 100 * self.line.mfc("mfc_ar").full_scale_slpm
        return lambda: abs((self._flow("mfc_ar") or 0.0) - op.ar_slpm) <= tolerance

    async def _ramp(self, op: RampOp) -> None:
        start_power = self.act.commanded.power_kw
        flows = self.act.commanded.flows_slpm
        start = (flows.get("mfc_ar", 0.0), flows.get("mfc_o2", 0.0), flows.get("mfc_n2", 0.0))
        end = (op.ar_slpm, op.o2_slpm, op.n2_slpm)
        await self.act.set_ramp_kw_s(self.line.rf().max_slew_kw_s, "recipe")
        if op.spindle_rpm is not None:
            await self.act.spindle_rpm(op.spindle_rpm, "recipe")
        increments = max(1, min(50, math.ceil(op.duration_s / 5.0)))
        # Each increment on a schedule from the ramp's start, not a sleep after its writes: the
        # ramp lasts the recipe's duration whatever its writes take on their buses (at x10 each
        # of 18 increments grew by its writes' wire time times ten, argon included).
        began = self.clock.now()
        for k in range(1, increments + 1):
            f = k / increments
            power = start_power + (op.power_kw - start_power) * f
            gases = [a + (b - a) * f for a, b in zip(start, end, strict=True)]
            await self.act.set_power_kw(power, "recipe")
            await self._set_gases(*gases)
            await self.clock.sleep(began + op.duration_s * f - self.clock.now())
        if op.power_kw <= 0:
            self.plasma_expected = False
            await self.act.rf_off("recipe")
            return
        await self._wait_power(op.power_kw, op.tolerances)

    async def _wait_power(self, power_kw: float, tolerances: Tolerances) -> None:
        slew = self.line.rf().max_slew_kw_s
        await self._until(
            lambda: self.telemetry.rf is not None
            and abs(self.telemetry.rf.forward_kw - power_kw) <= tolerances.power_kw,
            tolerances.settle_s + abs(power_kw) / slew, f"RF power {power_kw:g} kW",
        )

    def layer_power(self, layer: LayerOp) -> float:
        low, high = layer.power_trim_kw
        return layer.power_kw + max(low, min(high, self.trim_power_kw))

    async def _establish_plasma(self, layer: LayerOp, *, ramp_s: float = 0.0,
                                tolerances: Tolerances | None = None) -> None:
        await self.act.spindle_rpm(layer.spindle_rpm, "recipe")
        await self._set_gases(layer.ar_slpm, layer.o2_slpm, layer.n2_slpm)
        await self.act.set_ramp_kw_s(self.line.rf().max_slew_kw_s, "recipe")
        await self.act.set_power_kw(self.layer_power(layer), "recipe")
        if tolerances is not None:
            await self.clock.sleep(ramp_s)
            await self._wait_power(self.layer_power(layer), tolerances)

    async def establish_layer(self, layer: LayerOp, *, wait: bool) -> None:
        """Power, gases and rotation for a layer; with ``wait``, the precursor valve opens
        once the power holds (the deposition sets the precursor flows, in ratio)."""
        op = self.plan.steps[self.cursor.step]
        tolerances = op.tolerances if isinstance(op, DepositOp) and wait else None
        await self._establish_plasma(layer, tolerances=tolerances)
        await self.act.set_outputs("recipe", precursor_valve=True)

    async def _move(self, axis: str, target: float, speed_mm_min: float, what: str, *,
                    source: str = "recipe") -> None:
        """Move a linear axis and wait until it stands at the target."""
        await self.act.move_axis(axis, target, speed_mm_min, source)
        status = self.telemetry.axes.get(axis)
        distance = abs(target - (status.position_mm if status else target))
        tolerance = self.line.supervision.position_tolerance_mm
        expected_s = distance / speed_mm_min * 60
        await asyncio.sleep(0)  # let the poller see the new move before judging 'in position'

        def arrived() -> bool:
            s = self.telemetry.axes.get(axis)
            return s is not None and abs(s.position_mm - target) <= tolerance and not s.moving

        await self._until(arrived, expected_s * 1.5 + 10, what)

    async def to_pass_start(self, op: DepositOp) -> None:
        a, b = op.turning_point_a_mm, op.turning_point_b_mm
        start = a if self.cursor.passes_done % 2 == 0 else b
        await self._move("carriage", start, self.line.supervision.carriage_reposition_mm_min,
                         "the carriage at the pass start")

    async def track_gap(self, layer: LayerOp, diameter_mm: float, *, wait: bool = False) -> None:
        """The torch slide at the layer's coil gap for the diameter; ``wait``: until it is
        there (before the precursors flow: a gap far off the window lays little glass)."""
        slide = self.line.axis("torch_slide")
        at_zero = self.line.geometry.coil_to_axis_at_slide_zero_mm
        target = layer.coil_gap_mm + diameter_mm / 2 - at_zero
        target = round(max(slide.min_position_mm, min(slide.max_position_mm, target)), 3)
        speed = self.line.supervision.torch_slide_mm_min
        if wait:
            await self._move("torch_slide", target, speed, "the torch at the coil gap",
                             source="gap-control")
        else:
            await self.act.move_axis("torch_slide", target, speed, "gap-control")

    async def _deposit(self, op: DepositOp) -> None:
        self.current_op = "deposit"
        await Deposition(self, op).run()

    async def pass_ended(self, summary: PassSummary) -> None:
        self._log.info("executor.pass", passes_done=summary.passes_done,
                       diameter_mm=summary.diameter_mm)
        if self.on_pass is not None:
            await self.on_pass(summary, self.cursor)

    def outlook_changed(self, outlook: Outlook | None) -> None:
        self.outlook = outlook
        if self.on_outlook is not None:
            self.on_outlook(outlook)

    def current_layer(self) -> LayerOp | None:
        steps = self.plan.steps
        if self.cursor.step >= len(steps):
            return None
        op = steps[self.cursor.step]
        if not isinstance(op, DepositOp) or self.cursor.layer >= len(op.layers):
            return None
        return op.layers[self.cursor.layer]

    async def cool_down(self, op: CooldownOp) -> None:
        """Controlled end: precursors off, power down, RF off, purge, cool with rotation, park."""
        self.current_op = "cooldown"
        self.progress()
        await asyncio.gather(
            self.act.set_flow_slpm("mfc_sicl4", 0.0, "cooldown"),
            self.act.set_flow_slpm("mfc_dopant", 0.0, "cooldown"),
        )
        await self.act.set_outputs("cooldown", precursor_valve=False, heater_a=False,
                                   heater_b=False)
        await self.act.spindle_rpm(op.spindle_rpm, "cooldown")
        # The plasma will go out as the power falls: that is the plan, not a flame-out.
        self.plasma_expected = False
        if self.act.commanded.rf_on:
            power = max(self.act.commanded.power_kw, 1.0)
            rate = min(self.line.rf().max_slew_kw_s, power / op.power_ramp_down_s)
            await self.act.set_ramp_kw_s(rate, "cooldown")
            await self.act.set_power_kw(0.0, "cooldown")
            await self._until(
                lambda: self.telemetry.rf is None or self.telemetry.rf.forward_kw < 1.0
                or not self.plasma_lit,
                op.power_ramp_down_s + op.tolerances.settle_s, "RF power to ramp down",
            )
        self.plasma_expected = False
        await self.act.rf_off("cooldown")
        await self._set_gases(op.ar_slpm, op.o2_slpm, op.n2_slpm)
        slide = self.line.axis("torch_slide")
        carriage = self.line.axis("carriage")
        await asyncio.gather(
            self.act.move_axis("torch_slide", slide.park_position_mm or slide.max_position_mm,
                               self.line.supervision.torch_slide_mm_min, "cooldown"),
            self.act.move_axis("carriage", carriage.park_position_mm or 0.0,
                               self.line.supervision.carriage_reposition_mm_min, "cooldown"),
        )
        await self.clock.sleep(op.duration_s)
        # The rod keeps turning until it has cooled, however long the recipe said.
        limit = self.line.safety_io().rod_rotation_stop_c

        def cooled() -> bool:
            io = self.telemetry.safety
            return io is not None and io.rod_temperature_c <= limit

        deadline = self.clock.now() + self.line.supervision.cooldown_max_s
        while not cooled() and self.clock.now() < deadline:
            self.check_stop()
            await asyncio.sleep(self._wait_period_s)
        await self._set_gases(0.0, 0.0, 0.0)
        if cooled():
            await self.act.spindle_rpm(0.0, "cooldown")
