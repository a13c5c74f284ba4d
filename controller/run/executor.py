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
from dataclasses import asdict, dataclass
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
from controller.recipes.process_model import SIO2_PER_SICL4, grown_diameter_mm, mass_for_diameter_g
from controller.run.process_clock import ProcessClock
from controller.safety.writer import Actuators

log = structlog.get_logger(__name__)

POLL_S = 0.02  # how often a wait re-reads the telemetry (wall)


class StepFailed(Exception):
    """A step could not do its work (ignition failed, an axis never arrived...)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class IgnitionFailed(StepFailed):
    pass


@dataclass
class Cursor:
    """Where the run is: saved at every pass boundary, restored on resume."""

    step: int = 0
    layer: int = 0
    layer_pass: int = 0  # passes completed in the current layer
    passes_done: int = 0
    sicl4_scale: float = 1.0
    diameter_mm: float | None = None
    efficiency_estimate: float | None = None
    start_diameter_mm: float | None = None  # measured when deposition began
    basis_g: float = 0.0  # glass the passes so far would have made at efficiency 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cursor:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PassSummary:
    layer: int
    layer_name: str
    pass_index: int  # within the layer
    passes_done: int
    diameter_mm: float | None
    diameter_source: str  # "gauge" or "forecast"
    deposited_g: float
    duration_s: float  # process seconds
    sicl4_g_min: float
    started_wall: float
    ended_wall: float


PassListener = Callable[[PassSummary, Cursor], Awaitable[None]]
ProgressListener = Callable[[dict[str, Any]], None]


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
    ) -> None:
        self.plan = plan
        self.line = line
        self.act = act
        self.telemetry = telemetry
        self.clock = clock
        self.cursor = cursor or Cursor()
        self.on_pass = on_pass
        self.on_progress = on_progress
        self.plasma_expected = False
        self.trim_power_kw = 0.0
        self.trim_traverse_pct = 0.0
        self.current_op = "idle"
        self.stop_requested = False
        self.reignite_attempts: int | None = None  # set by the supervisor for re-ignition
        self._log = log.bind(recipe=plan.name)
        self._sicl4 = line.mfc("mfc_sicl4")

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

    def _check_stop(self) -> None:
        # Belt and braces for task cancellation, which Python 3.11's wait_for can swallow.
        if self.stop_requested:
            raise asyncio.CancelledError

    async def _until(self, condition: Callable[[], bool], process_s: float, what: str) -> None:
        deadline = time.monotonic() + self.clock.wall_budget(process_s)
        self._check_stop()
        while not condition():
            self._check_stop()
            if time.monotonic() > deadline:
                raise StepFailed(self.current_op, f"timed out waiting for {what}")
            await asyncio.sleep(POLL_S)

    def _progress(self, **extra: Any) -> None:
        if self.on_progress is not None:
            self.on_progress({"op": self.current_op, **asdict(self.cursor), **extra})

    # -- the run ---------------------------------------------------------------------------
    async def run(
        self, *, resume: bool = False, on_resumed: Callable[[], None] | None = None
    ) -> None:
        steps = self.plan.steps
        while self.cursor.step < len(steps):
            self._check_stop()
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
        self.current_op = "done"

    async def _do(self, op: Op) -> None:
        self.current_op = type(op).__name__.removesuffix("Op").lower()
        self._log.info("executor.step", step=self.cursor.step, op=self.current_op)
        self._progress()
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
            layer = op.layers[min(self.cursor.layer, len(op.layers) - 1)]
            await self._establish_layer(layer, op.tolerances, ramp_s=30.0)
            await self._to_pass_start(op)

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
            self._progress(attempt=attempt)
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
        for k in range(1, increments + 1):
            f = k / increments
            power = start_power + (op.power_kw - start_power) * f
            gases = [a + (b - a) * f for a, b in zip(start, end, strict=True)]
            await self.act.set_power_kw(power, "recipe")
            await self._set_gases(*gases)
            await self.clock.sleep(op.duration_s / increments)
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

    def _layer_traverse(self, layer: LayerOp) -> float:
        low, high = layer.traverse_trim_pct
        pct = max(low, min(high, self.trim_traverse_pct))
        return layer.traverse_mm_min * (1 + pct / 100)

    def _sicl4_slpm(self, layer: LayerOp) -> float:
        return self._sicl4.slpm_for(layer.sicl4_g_min * self.cursor.sicl4_scale)

    async def _establish_layer(
        self, layer: LayerOp, tolerances: Tolerances, *, ramp_s: float = 0.0
    ) -> None:
        """Power, gases and rotation for a layer; precursors last, once the plasma holds."""
        await self.act.spindle_rpm(layer.spindle_rpm, "recipe")
        await self._set_gases(layer.ar_slpm, layer.o2_slpm, layer.n2_slpm)
        await self.act.set_ramp_kw_s(self.line.rf().max_slew_kw_s, "recipe")
        await self.act.set_power_kw(self.layer_power(layer), "recipe")
        await self.clock.sleep(ramp_s)
        await self._wait_power(self.layer_power(layer), tolerances)
        await self.act.set_outputs("recipe", precursor_valve=True)
        await self.act.set_flow_slpm("mfc_sicl4", self._sicl4_slpm(layer), "recipe")
        await self.act.set_flow_slpm("mfc_dopant", layer.dopant_slpm, "recipe")

    def _pass_target(self, op: DepositOp) -> tuple[float, float]:
        """(start, end) of the next pass: A->B on even passes, B->A on odd."""
        a, b = op.turning_point_a_mm, op.turning_point_b_mm
        return (a, b) if self.cursor.passes_done % 2 == 0 else (b, a)

    async def _move_carriage(self, target: float, speed_mm_min: float, what: str) -> None:
        await self.act.move_axis("carriage", target, speed_mm_min, "recipe")
        status = self.telemetry.axes.get("carriage")
        distance = abs(target - (status.position_mm if status else target))
        tolerance = self.line.supervision.position_tolerance_mm
        expected_s = distance / speed_mm_min * 60
        await asyncio.sleep(0)  # let the poller see the new move before judging 'in position'

        def arrived() -> bool:
            s = self.telemetry.axes.get("carriage")
            return s is not None and abs(s.position_mm - target) <= tolerance and not s.moving

        await self._until(arrived, expected_s * 1.5 + 10, what)

    async def _to_pass_start(self, op: DepositOp) -> None:
        start, _ = self._pass_target(op)
        await self._move_carriage(start, self.line.supervision.carriage_reposition_mm_min,
                                  "the carriage at the pass start")

    async def _track_gap(self, layer: LayerOp, diameter_mm: float) -> None:
        slide = self.line.axis("torch_slide")
        at_zero = self.line.geometry.coil_to_axis_at_slide_zero_mm
        target = layer.coil_gap_mm + diameter_mm / 2 - at_zero
        target = max(slide.min_position_mm, min(slide.max_position_mm, target))
        await self.act.move_axis("torch_slide", round(target, 3),
                                 self.line.supervision.torch_slide_mm_min, "gap-control")

    async def _deposit(self, op: DepositOp) -> None:
        await self.act.enable_axis("carriage", "recipe")
        await self.act.enable_axis("torch_slide", "recipe")
        if self.cursor.diameter_mm is None:
            self.cursor.diameter_mm = (self.measured_diameter()
                                       or self.line.geometry.bait_rod_diameter_mm)
        if self.cursor.start_diameter_mm is None:
            self.cursor.start_diameter_mm = self.cursor.diameter_mm
        first_layer = op.layers[self.cursor.layer]
        await self._track_gap(first_layer, self.cursor.diameter_mm)
        await self._to_pass_start(op)
        while self.cursor.layer < len(op.layers):
            layer = op.layers[self.cursor.layer]
            await self._establish_layer(layer, op.tolerances)
            while self.cursor.layer_pass < layer.passes:
                await self._one_pass(op, layer)
            self.cursor.layer += 1
            self.cursor.layer_pass = 0
        await asyncio.gather(
            self.act.set_flow_slpm("mfc_sicl4", 0.0, "recipe"),
            self.act.set_flow_slpm("mfc_dopant", 0.0, "recipe"),
        )
        await self.act.set_outputs("recipe", precursor_valve=False, heater_a=False, heater_b=False)

    async def _one_pass(self, op: DepositOp, layer: LayerOp) -> None:
        self._check_stop()
        self.current_op = "deposit"
        if self.plan.target_diameter_mm is not None:
            self._correct_for_target(op)
        await self.act.set_flow_slpm("mfc_sicl4", self._sicl4_slpm(layer), "recipe")
        start, end = self._pass_target(op)
        diameter_before = self.cursor.diameter_mm or self.line.geometry.bait_rod_diameter_mm
        await self._track_gap(layer, diameter_before)
        if layer.heaters:
            # The heater at a turning point fires while the torch is away at the other end.
            leaving_a = start == op.turning_point_a_mm
            await self.act.set_outputs("recipe", heater_a=leaving_a, heater_b=not leaving_a)
        started_wall = time.monotonic()
        started_process = self.clock.now()
        self._progress(pass_from=start, pass_to=end)
        await self._move_carriage(end, self._layer_traverse(layer), "the end of the pass")
        duration = self.clock.now() - started_process
        stroke_s = abs(end - start) / self._layer_traverse(layer) * 60
        sicl4_g_min = self._sicl4.g_min_for(self._sicl4_slpm(layer))
        length = abs(op.turning_point_b_mm - op.turning_point_a_mm)
        basis_g = sicl4_g_min * SIO2_PER_SICL4 * stroke_s / 60  # the glass at efficiency 1
        self.cursor.basis_g += basis_g
        measured = await self._fresh_diameter(after_wall=time.monotonic())
        if measured is not None:
            diameter, source = measured, "gauge"
            self._estimate_efficiency(measured, length)
        else:
            # Open loop from the forecast: the gauge is lost, deposition goes on (rule 2).
            grown = self._efficiency() * basis_g
            diameter, source = grown_diameter_mm(diameter_before, grown, length), "forecast"
        deposited = self._efficiency() * basis_g
        self.cursor.diameter_mm = diameter
        self.cursor.layer_pass += 1
        self.cursor.passes_done += 1
        summary = PassSummary(
            layer=self.cursor.layer, layer_name=layer.name, pass_index=self.cursor.layer_pass,
            passes_done=self.cursor.passes_done, diameter_mm=round(diameter, 3),
            diameter_source=source, deposited_g=round(deposited, 3), duration_s=round(duration, 2),
            sicl4_g_min=round(sicl4_g_min, 3), started_wall=started_wall,
            ended_wall=time.monotonic(),
        )
        self._log.info("executor.pass", **asdict(summary))
        if self.on_pass is not None:
            await self.on_pass(summary, self.cursor)

    def current_layer(self) -> LayerOp | None:
        steps = self.plan.steps
        if self.cursor.step >= len(steps):
            return None
        op = steps[self.cursor.step]
        if not isinstance(op, DepositOp) or self.cursor.layer >= len(op.layers):
            return None
        return op.layers[self.cursor.layer]

    def _efficiency(self) -> float:
        return self.cursor.efficiency_estimate or self.line.supervision.nominal_efficiency

    def _estimate_efficiency(self, measured_mm: float, length_mm: float) -> None:
        """Apparent deposition efficiency from the growth measured since deposition began.

        Cumulative, not per pass: one pass grows the rod by about the gauge's resolution, so a
        per-pass estimate would be mostly quantisation noise."""
        start = self.cursor.start_diameter_mm
        if start is None or self.cursor.basis_g <= 0:
            return
        nominal = self.line.supervision.nominal_efficiency
        expected = grown_diameter_mm(start, nominal * self.cursor.basis_g, length_mm) - start
        if expected < 10 * self.line.gauge().resolution_mm:
            return  # too little growth yet to tell anything from noise
        mass = mass_for_diameter_g(start, measured_mm, length_mm)
        self.cursor.efficiency_estimate = max(0.02, min(1.0, mass / self.cursor.basis_g))

    async def _fresh_diameter(self, after_wall: float) -> float | None:
        """A gauge reading taken after the pass ended (the gauge polls slowly; a stale one
        would lag the growth by most of a pass at high time scales)."""
        health = self.telemetry.health.get("diameter_gauge")
        if health is None or not self.telemetry.link_ok("diameter_gauge"):
            return self.measured_diameter()
        budget = 1.2 / self.line.gauge().poll_hz
        deadline = time.monotonic() + budget
        while health.last_ok_wall <= after_wall and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return self.measured_diameter()

    def _remaining_passes(self, op: DepositOp) -> list[LayerOp]:
        passes: list[LayerOp] = []
        for index, layer in enumerate(op.layers):
            if index < self.cursor.layer:
                continue
            done = self.cursor.layer_pass if index == self.cursor.layer else 0
            passes.extend([layer] * (layer.passes - done))
        return passes

    def _correct_for_target(self, op: DepositOp) -> None:
        """Scale the remaining SiCl4 so the measured growth lands on the target diameter."""
        target = self.plan.target_diameter_mm
        diameter = self.cursor.diameter_mm
        remaining = self._remaining_passes(op)
        if target is None or diameter is None or not remaining:
            return
        length = abs(op.turning_point_b_mm - op.turning_point_a_mm)
        efficiency = self._efficiency()
        needed = mass_for_diameter_g(diameter, target, length)
        planned = sum(
            efficiency * layer.sicl4_g_min * SIO2_PER_SICL4
            * (length / self._layer_traverse(layer))  # minutes per pass
            for layer in remaining
        )
        if planned <= 0:
            return
        low, high = self.line.supervision.diameter_correction_limits
        full_scale_g = self._sicl4.g_min_for(self._sicl4.full_scale_slpm)
        peak = max(layer.sicl4_g_min for layer in remaining)
        high = min(high, full_scale_g / peak) if peak > 0 else high
        self.cursor.sicl4_scale = max(low, min(high, needed / planned)) if needed > 0 else low

    async def cool_down(self, op: CooldownOp) -> None:
        """Controlled end: precursors off, power down, RF off, purge, cool with rotation, park."""
        self.current_op = "cooldown"
        self._progress()
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
            self._check_stop()
            await asyncio.sleep(POLL_S)
        await self._set_gases(0.0, 0.0, 0.0)
        if cooled():
            await self.act.spindle_rpm(0.0, "cooldown")
