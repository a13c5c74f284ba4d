"""One deposit step on the machine: the carriage oscillates drive-side between the turning
points (a turning point costs no wire round trip, so the glass is the same at any time scale)
and at every pass boundary the closed loop (``growth_control``) sets the next pass's SiCl4
flow, the dopant in ratio, and traverse speed, within the recipe's authority."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import structlog

from controller.config.line import LineConfig
from controller.machine.telemetry import Telemetry
from controller.recipes.authority import Authority, layer_authority
from controller.recipes.plan import DepositOp, LayerOp
from controller.recipes.process_model import SIO2_PER_SICL4
from controller.run.cursor import Cursor, PassSummary
from controller.run.growth_control import (
    OUTLOOK_WINDOW_PASSES,
    Correction,
    GrowthEstimator,
    Outlook,
    correct,
    outlook,
    pass_basis_g,
)
from controller.run.process_clock import ProcessClock
from controller.run.step_errors import StepFailed
from controller.safety.writer import Actuators
from drivers.codecs.servo_map import AxisStatus

log = structlog.get_logger(__name__)

POLL_S = 0.02  # how often the pass watch re-reads the telemetry (wall)
# How long a carriage that stopped oscillating by itself is left to the safety cycle (which
# sees an E-stop or a drive alarm within a cycle) before it is this step's failure.
STOPPED_GRACE_S = 1.0
# The loop changes a pass's glass by at most this much from the pass before (no jumps from a
# noisy reading; the pile-up the issue speaks of is avoided by spreading, not by this).
MAX_STEP = 0.1
# The outlook raises the alarm when the final diameter would miss by more than this (% of it),
# or a layer's radial thickness by more than that (% of its planned thickness).
OUTLOOK_FINAL_PCT = 0.1
OUTLOOK_MIN_PASSES = 2
OUTLOOK_MARGIN = 0.03  # the efficiency estimate's noise over one pass at x200
OUTLOOK_LAYER_PCT = 3.0




class DepositHost(Protocol):
    """What a deposit step needs from the executor that runs it."""

    line: LineConfig
    act: Actuators
    telemetry: Telemetry
    clock: ProcessClock
    cursor: Cursor
    trim_traverse_pct: float
    current_op: str

    def check_stop(self) -> None: ...
    def progress(self, **extra: Any) -> None: ...
    def measured_diameter(self) -> float | None: ...
    def layer_power(self, layer: LayerOp) -> float: ...
    async def establish_layer(self, layer: LayerOp, *, wait: bool) -> None: ...
    async def track_gap(self, layer: LayerOp, diameter_mm: float, *,
                        wait: bool = False) -> None: ...
    async def to_pass_start(self, op: DepositOp) -> None: ...
    async def pass_ended(self, summary: PassSummary) -> None: ...
    def outlook_changed(self, outlook: Outlook | None) -> None: ...


class _PassTally:
    """The measured flows integrated over one pass (process time), for its composition."""

    def __init__(self, clock: ProcessClock, basis_g: float) -> None:
        self.basis_start_g = basis_g
        self.started_wall = time.monotonic()
        self.started_process = clock.now()
        self.sicl4_l = 0.0
        self.dopant_l = 0.0

    def add(self, sicl4_slpm: float, dopant_slpm: float, dt_s: float) -> None:
        self.sicl4_l += sicl4_slpm * dt_s / 60
        self.dopant_l += dopant_slpm * dt_s / 60

    def composition_error_pct(self, ratio: float) -> float | None:
        if ratio <= 0 or self.sicl4_l <= 0:
            return None
        return (self.dopant_l / self.sicl4_l / ratio - 1) * 100


@dataclass
class _Watch:
    """The watch over one oscillation: what the drive was given, what the loop has counted."""

    given: int  # strokes the drive was given
    sent_wall: float  # when the oscillation was sent (older polls show the last one's count)
    tally: _PassTally
    last_process: float
    deadline: float  # wall: the pass running must have ended by then
    counted: int = 0  # passes the loop has worked the boundary of
    anticipated: int = 0  # of those, worked at a predicted reversal
    stopped_wall: float = 0.0  # when the drive was first seen stopped short (0: it was not)


class Deposition:
    def __init__(self, host: DepositHost, op: DepositOp) -> None:
        self.host = host
        self.op = op
        self.cursor = host.cursor
        self.length = op.stroke_mm
        line = host.line
        self._sicl4 = line.mfc("mfc_sicl4")
        self._authority = [layer_authority(layer, line) for layer in op.layers]
        self.estimator = GrowthEstimator(
            self.length, host.cursor.efficiency_estimate or line.supervision.nominal_efficiency,
            resolution_mm=line.gauge().resolution_mm, basis_g=host.cursor.basis_g,
            diameter_mm=host.cursor.diameter_mm)
        self._last_reading_wall = 0.0
        self._strokes_base = 0  # strokes of earlier oscillations in this step (extra passes)
        self._source = "gauge"
        # Traverse speeds (mm/min): of the pass running, the last written to the drive (it
        # runs from the pass after the one it was written in), and the one the loop wants.
        self._speed_running = self._speed_written = self._speed_wanted = 0.0
        self._correction_now = Correction(1.0, 1.0, 1.0, 0.0, limited=False, step_limited=False)

    # -- passes ----------------------------------------------------------------------------
    def passes(self, index: int) -> int:
        return self.op.layers[index].passes + self.cursor.extra_for(index)

    def remaining_in_step(self) -> int:
        c = self.cursor
        later = sum(self.passes(i) for i in range(c.layer + 1, len(self.op.layers)))
        return self.passes(c.layer) - c.layer_pass + later if c.layer < len(self.op.layers) else 0

    def layer(self) -> LayerOp:
        return self.op.layers[self.cursor.layer]

    def _pass_ends(self) -> tuple[float, float]:
        a, b = self.op.turning_point_a_mm, self.op.turning_point_b_mm
        return (a, b) if self.cursor.passes_done % 2 == 0 else (b, a)

    # -- the step --------------------------------------------------------------------------
    async def run(self) -> None:
        host, c = self.host, self.cursor
        await host.act.enable_axis("carriage", "recipe")
        await host.act.enable_axis("torch_slide", "recipe")
        if c.diameter_mm is None:
            c.diameter_mm = host.measured_diameter() or host.line.geometry.bait_rod_diameter_mm
            self.estimator.observe(c.diameter_mm)
        if c.start_diameter_mm is None:
            c.start_diameter_mm = c.diameter_mm
        while c.layer < len(self.op.layers) and self.remaining_in_step() > 0:
            layer = self.layer()
            await asyncio.gather(host.track_gap(layer, c.diameter_mm, wait=True),
                                 host.to_pass_start(self.op))
            await host.establish_layer(layer, wait=True)
            self._speed_running = 0.0  # the oscillation about to start gives the speed
            await self._apply(self._correction(), layer, first=True)
            await self._oscillate()
        await asyncio.gather(
            host.act.set_flow_slpm("mfc_sicl4", 0.0, "recipe"),
            host.act.set_flow_slpm("mfc_dopant", 0.0, "recipe"),
        )
        await host.act.set_outputs("recipe", precursor_valve=False, heater_a=False,
                                   heater_b=False)

    async def _oscillate(self) -> None:
        """Hand the remaining passes to the drive, then follow its stroke count: each stroke
        it completes is a pass boundary, where the loop sets the next pass."""
        host = self.host
        start, end = self._pass_ends()
        given = self.remaining_in_step()
        speed = self._traverse(self.layer(), self.cursor.traverse_pct)
        self._speed_running = self._speed_written = self._speed_wanted = speed
        watch = _Watch(given=given, sent_wall=time.monotonic(),
                       tally=_PassTally(host.clock, self.estimator.basis_g),
                       last_process=host.clock.now(), deadline=self._pass_deadline())
        await host.act.oscillate_axis("carriage", (start, end), speed, given, "recipe")
        await self._heaters(start)
        while not await self._watch_once(watch):
            pass

    async def _watch_once(self, w: _Watch) -> bool:
        """One look at the drive: integrate, read the gauge, work the boundaries it reached
        or is about to reach, tell it what changed. True once the step's passes are made."""
        host = self.host
        host.check_stop()
        status = self._carriage_since(w.sent_wall)
        to_reversal = self._wall_to_reversal(status, w.counted)
        await asyncio.sleep(min(POLL_S, to_reversal))
        now = host.clock.now()
        self._integrate(w.tally, now - w.last_process)
        w.last_process = now
        self._read_gauge()
        if status is None:
            self._check_deadline(w.deadline)
            return False
        # The boundary's work is done at the reversal the drive is about to make (timed from
        # its position and speed), not one poll after it: a layer's new composition begins
        # with its first pass at any time scale. The count confirms it.
        predicted = 1 if to_reversal <= POLL_S else 0
        while (max(status.strokes_done, w.anticipated + predicted) > w.counted
               and self.remaining_in_step() > 0):
            w.counted += 1
            w.tally = await self._pass_complete(w.tally)
            w.deadline = self._pass_deadline()
        w.anticipated = w.counted if predicted else max(w.anticipated, status.strokes_done)
        status = self._carriage_since(w.sent_wall) or status
        await self._tell_speed(status, w.counted)
        return await self._follow_drive(w, status)

    async def _tell_speed(self, status: AxisStatus, counted: int) -> None:
        if status.strokes_done >= counted and abs(
                self._speed_wanted - self._speed_written) > 1e-9:
            # The drive is in the pass the loop counts: a speed written now is taken at the
            # reversal that ends it, never one pass early.
            await self.host.act.set_oscillation_speed("carriage", self._speed_wanted, "recipe")
            self._speed_written = self._speed_wanted

    async def _follow_drive(self, w: _Watch, status: AxisStatus) -> bool:
        wanted = w.counted + self.remaining_in_step()
        if wanted == w.counted:
            return True
        if not status.oscillating:
            if w.counted >= w.given:
                return True  # it ran what it was given before the added passes reached it
            # Stopped by something else: an E-stop, a drive alarm, a limit. The safety cycle
            # names the cause and cuts in; only if nothing does is it this step's.
            w.stopped_wall = w.stopped_wall or time.monotonic()
            if time.monotonic() - w.stopped_wall > STOPPED_GRACE_S:
                raise StepFailed("deposit", "the carriage stopped oscillating")
            return False
        w.stopped_wall = 0.0
        if wanted != w.given:  # the operator added passes: the drive reads it at a reversal
            w.given = wanted
            await self.host.act.set_oscillation_strokes("carriage", w.given, "recipe")
        self._check_deadline(w.deadline)
        return False

    def _wall_to_reversal(self, status: AxisStatus | None, counted: int) -> float:
        """Wall seconds until the carriage reaches the end of the pass running, from its last
        polled position carried forward at the pass's speed; infinite (no prediction) unless
        that poll shows the drive in the pass the loop counts (heading for its end)."""
        health = self.host.telemetry.health.get("carriage")
        if (status is None or health is None or not status.oscillating
                or status.strokes_done != counted):
            return math.inf
        _, end = self._pass_ends()
        age = time.monotonic() - health.last_ok_wall
        speed = self._speed_running / 60  # mm/s of process time
        scale = self.host.clock.time_scale
        remaining = abs(end - status.position_mm) - speed * age * scale
        return max(0.0, remaining) / speed / scale

    def _carriage_since(self, sent_wall: float) -> AxisStatus | None:
        """The carriage's status from a poll after the oscillation was sent (an older one
        still counts the strokes of the last oscillation)."""
        health = self.host.telemetry.health.get("carriage")
        status = self.host.telemetry.axes.get("carriage")
        if health is None or status is None or health.last_ok_wall <= sent_wall:
            return None
        if not status.oscillating and status.strokes_done == 0:
            return None  # not begun yet (the drive may still be reaching the first point)
        return status

    def _pass_deadline(self) -> float:
        layer = self.op.layers[min(self.cursor.layer, len(self.op.layers) - 1)]
        speed = self._traverse(layer, self.cursor.traverse_pct)
        process_s = self.length / speed * 60 * 1.5 + 10
        return time.monotonic() + self.host.clock.wall_budget(process_s)

    @staticmethod
    def _check_deadline(deadline: float) -> None:
        if time.monotonic() > deadline:
            raise StepFailed("deposit", "timed out waiting for the end of a pass")

    # -- measuring -------------------------------------------------------------------------
    def _flow(self, device: str) -> float:
        reading = self.host.telemetry.mfcs.get(device)
        return 0.0 if reading is None else max(0.0, reading.mass_slpm)

    def _integrate(self, tally: _PassTally, dt_s: float) -> None:
        sicl4, dopant = self._flow("mfc_sicl4"), self._flow("mfc_dopant")
        tally.add(sicl4, dopant, dt_s)
        if self.host.act.commanded.outputs.precursor_valve:
            self.estimator.offer(self._sicl4.g_min_for(sicl4), dt_s)
        self.cursor.basis_g = self.estimator.basis_g

    def _read_gauge(self) -> None:
        health = self.host.telemetry.health.get("diameter_gauge")
        if health is None or health.last_ok_wall <= self._last_reading_wall:
            return
        measured = self.host.measured_diameter()
        if measured is not None:
            self._last_reading_wall = health.last_ok_wall
            # Paired with the glass offered when the reading was taken, not when it is seen
            # here (at x200 the difference is several process seconds of SiCl4).
            lag_s = (time.monotonic() - health.last_ok_wall) * self.host.clock.time_scale
            rate_g_s = self._sicl4.g_min_for(self._flow("mfc_sicl4")) * SIO2_PER_SICL4 / 60
            self.estimator.observe(measured, self.estimator.basis_g - rate_g_s * lag_s)

    def _diameter_now(self, layer: LayerOp) -> tuple[float, str]:
        """From the gauge (grown by what was offered since its last reading); open loop from
        the forecast when the gauge is lost (rule 2: deposition goes on)."""
        basis = pass_basis_g(layer, self.length)
        if self.host.telemetry.link_ok("diameter_gauge"):
            now = self.estimator.diameter_now(basis)
            if now is not None:
                return now, "gauge"
        return self.estimator.diameter_now(basis) or self.host.line.geometry.bait_rod_diameter_mm, \
            "forecast"

    # -- the loop --------------------------------------------------------------------------
    def _correction(self) -> Correction:
        c, layer = self.cursor, self.layer()
        basis = pass_basis_g(layer, self.length)
        efficiency = self.estimator.efficiency(basis)
        diameter, self._source = self._diameter_now(layer)
        c.diameter_mm = diameter
        c.efficiency_estimate = efficiency
        remaining = max(1, self.passes(c.layer) - c.layer_pass)
        correction = correct(
            diameter_mm=diameter, boundary_mm=layer.target_diameter_mm,
            remaining_passes=remaining, efficiency=efficiency, basis_per_pass_g=basis,
            length_mm=self.length, authority=self._authority[c.layer],
            operator_traverse_pct=self.host.trim_traverse_pct, previous_factor=c.factor,
            max_step=MAX_STEP, running_traverse_pct=self._running_pct(layer))
        quick = self.estimator.efficiency(basis, OUTLOOK_WINDOW_PASSES)
        self.host.outlook_changed(self._outlook(diameter, quick))
        return correction

    def _running_pct(self, layer: LayerOp) -> float | None:
        """The traverse of the pass running, as a trim of this layer's speed (None before the
        oscillation: the first pass's speed is still to be given)."""
        if self._speed_running <= 0:
            return None
        return (self._speed_running / layer.traverse_mm_min - 1) * 100

    def _outlook(self, diameter: float, efficiency: float) -> Outlook | None:
        c = self.cursor
        if self.remaining_in_step() < OUTLOOK_MIN_PASSES or c.passes_done < OUTLOOK_MIN_PASSES:
            return None  # a pass from either end, a reading's noise is all it could see
        layers: list[tuple[int, LayerOp, int, Authority]] = [
            (i, self.op.layers[i], self.passes(i) - (c.layer_pass if i == c.layer else 0),
             self._authority[i])
            for i in range(c.layer, len(self.op.layers))
        ]
        first = self.op.layers[c.layer]
        inner = (self.op.layers[c.layer - 1].target_diameter_mm if c.layer > 0
                 else c.start_diameter_mm or self.host.line.geometry.bait_rod_diameter_mm)
        # Judged at either edge of the estimate's noise (a pass of gauge readings): the alarm
        # comes as soon as the outcome is at risk, and names the outcome at that edge.
        for edge in (1 - OUTLOOK_MARGIN, 1 + OUTLOOK_MARGIN):
            forecast = outlook(diameter_mm=diameter, layers=layers,
                               efficiency=min(1.0, efficiency * edge), length_mm=self.length)
            missed = forecast.misses(final_pct=OUTLOOK_FINAL_PCT,
                                     thickness_pct=OUTLOOK_LAYER_PCT,
                                     inner_mm=min(inner, first.target_diameter_mm))
            short = edge < 1
            if any((o.expected_mm < o.planned_mm) == short for o in missed):
                return forecast
        return None

    def _traverse(self, layer: LayerOp, pct: float) -> float:
        return layer.traverse_mm_min * (1 + pct / 100)

    async def _apply(self, correction: Correction, layer: LayerOp, *, first: bool) -> None:
        """SiCl4 and dopant at once (the pass has begun), in ratio; the traverse from the next
        reversal (the drive's one pass, one speed), or now for the first pass."""
        act, c = self.host.act, self.cursor
        sicl4 = layer.sicl4_slpm * correction.sicl4_scale
        await asyncio.gather(
            act.set_flow_slpm("mfc_sicl4", sicl4, "recipe"),
            act.set_flow_slpm("mfc_dopant", sicl4 * layer.dopant_per_sicl4, "recipe"),
        )
        c.sicl4_scale, c.factor = correction.sicl4_scale, correction.factor
        speed = self._traverse(layer, correction.traverse_pct)
        if not first:
            self._speed_wanted = speed  # written once the drive confirms this pass began
        c.traverse_pct = correction.traverse_pct
        self._correction_now = correction

    async def _heaters(self, start: float) -> None:
        layer = self.layer()
        if layer.heaters:
            # The heater at a turning point fires while the torch is away at the other end.
            leaving_a = start == self.op.turning_point_a_mm
            await self.host.act.set_outputs("recipe", heater_a=leaving_a, heater_b=not leaving_a)

    async def _boundary_writes(self, correction: Correction | None, *, new_layer: bool,
                               diameter: float) -> None:
        """The next pass's setpoints: the precursors first (its composition begins with it),
        then a new layer's gases and power, the heaters and the coil gap."""
        host = self.host
        if correction is not None:
            await self._apply(correction, self.layer(), first=False)
        if new_layer:
            await host.establish_layer(self.layer(), wait=False)
        if correction is not None:
            start, _ = self._pass_ends()
            await asyncio.gather(self._heaters(start), host.track_gap(self.layer(), diameter))
        host.progress(pass_from=self._pass_ends()[0], pass_to=self._pass_ends()[1])

    async def _pass_complete(self, tally: _PassTally) -> _PassTally:
        """The pass that ``tally`` measured has ended: the next one begins now (its tally
        too), then the boundary's work; returns the next pass's tally."""
        host, c = self.host, self.cursor
        ended_process, ended_wall = host.clock.now(), time.monotonic()
        following = _PassTally(host.clock, self.estimator.basis_g)
        layer = self.layer()
        applied = self._correction_now
        scale = c.sicl4_scale  # of the pass that just ended (the loop sets the next below)
        sicl4_slpm = layer.sicl4_slpm * scale
        finished_speed, self._speed_running = self._speed_running, self._speed_written
        c.layer_pass += 1
        c.passes_done += 1
        layer_index = c.layer
        new_layer = c.layer_pass >= self.passes(c.layer) and c.layer + 1 < len(self.op.layers)
        if new_layer:
            c.layer += 1
            c.layer_pass = 0
        diameter, source = self._diameter_now(layer)
        c.diameter_mm = diameter
        more = self.remaining_in_step() > 0
        correction = self._correction() if more else None  # the estimate at this boundary
        summary = PassSummary(
            layer=layer_index, layer_name=layer.name, pass_index=c.layer_pass or self.passes(
                layer_index), passes_done=c.passes_done, diameter_mm=round(diameter, 3),
            diameter_source=source, planned_boundary_mm=round(layer.target_diameter_mm, 3),
            deposited_g=round((c.efficiency_estimate or 0.0)
                              * (following.basis_start_g - tally.basis_start_g), 3),
            duration_s=round(ended_process - tally.started_process, 2),
            sicl4_g_min=round(self._sicl4.g_min_for(sicl4_slpm), 3),
            sicl4_scale=round(scale, 4),
            dopant_slpm=round(sicl4_slpm * layer.dopant_per_sicl4, 4),
            traverse_mm_min=round(finished_speed, 2),
            efficiency=round(c.efficiency_estimate or 0.0, 4),
            wanted_factor=round(applied.wanted, 4), limited=applied.limited,
            composition_error_pct=_rounded(tally.composition_error_pct(layer.dopant_per_sicl4)),
            started_wall=tally.started_wall, ended_wall=ended_wall,
        )
        log.info("deposition.pass", **asdict(summary))
        try:
            await self._boundary_writes(correction, new_layer=new_layer, diameter=diameter)
        finally:
            # The pass is made and counted: it is recorded (and checkpointed) even when a hold
            # cancels the boundary's writes (rule 9: nothing made goes unrecorded).
            # Shielded: a second cancel (a hold, then a trip) cannot cut the record short.
            record = asyncio.ensure_future(host.pass_ended(summary))
            # Cancelled while it finishes, nobody reads its failure (the records' own listener
            # has held the run): read it here so it is not reported as lost.
            record.add_done_callback(lambda f: f.cancelled() or f.exception())
            await asyncio.shield(record)
        return following


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
