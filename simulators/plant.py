"""The simulated plant: the physics every simulated device shares.

Device simulators write what their hardware does to the plant (actual gas flows, forward RF
power, axis positions) and read what they sense from it (plasma lit, rod temperature,
diameter). ``Plant.step`` then advances ignition, flame-out, rod heating and the preform's
growth by one process-time step; ``LineSimulator`` calls it (and the devices' dynamics) at a
fixed process sub-step (``max_step_s``), so a run at x200 integrates like one at x10.
Figures come from the line configuration's ``plant`` section (estimates from domain.md, with
their sources there), never from constants here.

Growth spreads over the stroke the carriage actually travels over the rod (between its last
two reversal points), not a configured length: glass laid down during a stroke is spread over
an estimate (the previous stroke, or ``deposition_length_mm`` before there is one) while it is
being laid, and the stroke's mass is re-spread over the span really travelled at the reversal
that ends it. The rod heats toward the plasma's temperature while lit, and cools by radiation
plus natural convection over its heat capacity otherwise (minutes, not seconds)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.config.line import MFC_NAMES, PRECURSORS, GeometryConfig, LineConfig, MfcConfig
from controller.recipes.process_model import SIO2_PER_SICL4, grown_diameter_mm
from simulators.faults import FaultBoard


class PlantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The fixed process step the line's physics (device dynamics, then the plant) advances by,
    # whatever the time scale: a tick of 2 process seconds at x200 is 20 sub-steps.
    max_step_s: float = Field(default=0.1, gt=0, le=1.0)
    mfc_time_constant_s: float = Field(default=0.5, gt=0)
    # Heating while lit: first order toward the plasma's surface temperature.
    rod_heating_time_constant_s: float = Field(default=30.0, gt=0)
    # Cooling when the plasma does not heat the rod: radiation plus natural convection.
    rod_emissivity: float = Field(default=0.9, gt=0, le=1)
    rod_convection_w_m2_k: float = Field(default=10.0, ge=0)
    # Silica's specific heat, linear between two temperatures and flat outside them.
    silica_specific_heat_j_kg_k: tuple[float, float] = (750.0, 1200.0)
    silica_specific_heat_at_c: tuple[float, float] = (25.0, 1200.0)
    ignition_min_power_kw: float = 10.0
    ignition_min_argon_slpm: float = 20.0
    ignition_failure_probability: float = Field(default=0.0, ge=0, le=1)
    sustain_min_power_kw: float = 8.0
    sustain_min_plasma_gas_slpm: float = 20.0
    efficiency_nominal: float = Field(default=0.5, gt=0, le=1)
    efficiency_power_window_kw: tuple[float, float] = (30.0, 80.0)
    efficiency_gap_window_mm: tuple[float, float] = (25.0, 35.0)
    # The span glass spreads over until the carriage has reversed twice (then: the stroke run).
    deposition_length_mm: float = Field(default=600.0, gt=0)
    # The narrowest span a stroke's glass spreads over: the plasma plume's deposition zone.
    deposition_min_length_mm: float = Field(default=40.0, gt=0)
    silica_density_g_cm3: float = Field(default=2.203, gt=0)
    rod_temperature_lit_c: float = 1500.0
    ambient_c: float = 25.0
    water_flow_l_min: float = 25.0
    water_temp_c: float = 22.0
    exhaust_draft_pa: float = -50.0  # with the exhaust fan running (0 Pa without it)
    room_o2_pct: float = 20.9  # the room O2 monitor's reading in fresh air
    gas_supply_bar: float = 5.0
    seed: int = 1

    @model_validator(mode="after")
    def _specific_heat_table(self) -> PlantConfig:
        low, high = self.silica_specific_heat_at_c
        if high <= low or min(self.silica_specific_heat_j_kg_k) <= 0:
            raise ValueError("silica_specific_heat: two positive values at rising temperatures")
        return self

    def specific_heat_j_kg_k(self, temperature_c: float) -> float:
        (c_low, c_high), (t_low, t_high) = (
            self.silica_specific_heat_j_kg_k,
            self.silica_specific_heat_at_c,
        )
        fraction = min(1.0, max(0.0, (temperature_c - t_low) / (t_high - t_low)))
        return c_low + (c_high - c_low) * fraction


STEFAN_BOLTZMANN_W_M2_K4 = 5.670374e-8  # a physical constant, not a figure of the line
KELVIN = 273.15
REVERSAL_HYSTERESIS_MM = 0.01  # travel back from the furthest point that makes a reversal


def _window_factor(value: float, low: float, high: float, fall: float) -> float:
    """1 inside [low, high], falling linearly to 0 over ``fall`` outside it."""
    if value < low:
        return max(0.0, 1 - (low - value) / fall)
    if value > high:
        return max(0.0, 1 - (value - high) / fall)
    return 1.0


@dataclass(frozen=True)
class StrokeRecord:
    """One stroke of the carriage while precursors flowed, as the plant saw it."""

    ended_s: float  # process time of the reversal (or the stop) that ended it
    diameter_mm: float  # the rod's diameter then
    sicl4_l: float  # standard litres of SiCl4 that reached the torch during it
    dopant_l: float


@dataclass
class StrokeTracker:
    """The carriage's reversal points over the rod, from the positions it passes through, and
    the glass laid down since the last one."""

    rod: tuple[float, float]  # the carriage positions over the rod (turning points A and B)
    position: float
    extreme: float  # the furthest point of the travel under way
    direction: int = 0  # +1 / -1 once the carriage has moved
    reversal: float | None = None  # the last reversal point (over the rod)
    length_mm: float | None = None  # the span glass spreads over now (None: the configured)
    grams: float = 0.0  # laid down since the last reversal, over ``spread_mm``
    spread_mm: float | None = None
    still_at: float | None = None  # where the carriage has stood since its last move

    def follow(self, position: float) -> tuple[bool, float | None]:
        """Track a new carriage position: (a reversal now, the span of the stroke it ends, or
        None for the first reversal, which has no measured stroke behind it). A carriage that
        stood still and moves off again starts a stroke there, whichever way it goes (a move
        to the pass start, then the oscillation)."""
        standing = position == self.position
        self.position = position
        if standing:
            if self.direction != 0 and self.still_at is None:
                self.still_at = position
            return False, None
        if self.still_at is not None and abs(position - self.still_at) > REVERSAL_HYSTERESIS_MM:
            start, self.still_at = self.still_at, None
            low, high = self.rod
            point = min(max(start, low), high)
            previous, self.reversal = self.reversal, point
            self.direction = 1 if position > start else -1
            self.extreme = position
            return True, None if previous is None else abs(point - previous)
        moved = position - self.extreme
        if self.direction == 0:
            if abs(moved) > REVERSAL_HYSTERESIS_MM:
                self.direction = 1 if moved > 0 else -1
                self.extreme = position
            return False, None
        if moved * self.direction > 0:
            self.extreme = position
            return False, None
        if abs(moved) <= REVERSAL_HYSTERESIS_MM:
            return False, None
        low, high = self.rod
        point = min(max(self.extreme, low), high)
        previous, self.reversal = self.reversal, point
        self.direction = -self.direction
        self.extreme = position
        return True, None if previous is None else abs(point - previous)


@dataclass
class Plant:
    config: PlantConfig
    geometry: GeometryConfig
    faults: FaultBoard
    sicl4: MfcConfig  # its g/min <-> slpm conversion is the line model's, not the plant's
    # Written by the device simulators.
    gas_flow_slpm: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MFC_NAMES, 0.0))
    rf_on: bool = False
    rf_forward_kw: float = 0.0
    rf_enable: bool = True  # the safety relay's RF-enable output, driven by the safety PLC
    drives_powered: bool = True  # drives lose power on E-stop
    spindle_rpm: float = 0.0
    carriage_mm: float = 0.0
    carriage_turning_points: tuple[float, float] | None = None  # while the drive oscillates
    torch_slide_mm: float = 150.0
    heaters_on: list[bool] = field(default_factory=lambda: [False, False])
    exhaust_fan_on: bool = False  # driven by the safety PLC (forced on after a heartbeat loss)
    master_valve_open: bool = True
    precursor_valve_open: bool = True
    # Plant state.
    plasma_lit: bool = False
    ignition_failed: bool = False
    flame_outs: int = 0
    rod_diameter_mm: float = 30.0
    rod_temperature_c: float = 25.0
    deposited_g: float = 0.0
    process_time_s: float = 0.0
    efficiency_drift: float = 0.0
    _rng: random.Random = field(default_factory=random.Random)
    _strokes: StrokeTracker | None = None
    strokes: list[StrokeRecord] = field(default_factory=list)  # each stroke the torch laid glass
    _stroke_flows: list[float] = field(default_factory=lambda: [0.0, 0.0])  # SiCl4, dopant (L)
    # The heating factor for the last step length (steps repeat one length).
    _heating_dt_s: float = 0.0
    _heating_alpha: float = 0.0

    @classmethod
    def from_line(cls, line: LineConfig, faults: FaultBoard) -> Plant:
        config = PlantConfig.model_validate(line.plant)
        sicl4 = line.mfc("mfc_sicl4")
        plant = cls(
            config=config,
            geometry=line.geometry,
            faults=faults,
            sicl4=sicl4,
        )
        plant.rod_diameter_mm = line.geometry.bait_rod_diameter_mm
        plant.rod_temperature_c = config.ambient_c
        plant.torch_slide_mm = line.axis("torch_slide").park_position_mm or 0.0
        plant._rng = random.Random(config.seed)
        return plant

    def _stroke_tracker(self) -> StrokeTracker:
        if self._strokes is None:
            a, b = self.geometry.turning_point_a_mm, self.geometry.turning_point_b_mm
            self._strokes = StrokeTracker(
                (min(a, b), max(a, b)), self.carriage_mm, self.carriage_mm
            )
        return self._strokes

    @property
    def deposition_span_mm(self) -> float:
        """The span the glass being laid down now spreads over."""
        length = self._stroke_tracker().length_mm
        if length is not None:
            return length
        if self.carriage_turning_points is not None:
            first, second = self.carriage_turning_points
            return max(abs(second - first), self.config.deposition_min_length_mm)
        return self.config.deposition_length_mm

    # -- derived quantities ----------------------------------------------------------------
    @property
    def coil_gap_mm(self) -> float:
        coil_to_axis = self.geometry.coil_to_axis_at_slide_zero_mm + self.torch_slide_mm
        return coil_to_axis - self.rod_diameter_mm / 2

    @property
    def sicl4_g_min(self) -> float:
        if not self.precursor_valve_open or not self.master_valve_open:
            return 0.0
        return self.sicl4.g_min_for(self.gas_flow_slpm["mfc_sicl4"])

    def effective_flow(self, device: str) -> float:
        """What actually reaches the torch: closed valves stop the gas whatever the MFC says."""
        if not self.master_valve_open:
            return 0.0
        if device in PRECURSORS and not self.precursor_valve_open:
            return 0.0
        return self.gas_flow_slpm[device]

    @property
    def torch_over_rod(self) -> bool:
        a, b = self.geometry.turning_point_a_mm, self.geometry.turning_point_b_mm
        return min(a, b) - 1 <= self.carriage_mm <= max(a, b) + 1

    def efficiency(self) -> float:
        drift = self.efficiency_drift
        faults = self.faults
        fault = None if faults.quiet("plant") else faults.active("plant", "efficiency_drift")
        if fault is not None:
            drift += float(fault.params.get("fraction", -0.2))
        p_low, p_high = self.config.efficiency_power_window_kw
        g_low, g_high = self.config.efficiency_gap_window_mm
        power = _window_factor(self.rf_forward_kw, p_low, p_high, 20.0)
        gap = _window_factor(self.coil_gap_mm, g_low, g_high, 15.0)
        return max(0.0, self.config.efficiency_nominal * power * gap * (1 + drift))

    @property
    def reflected_fraction(self) -> float:
        if not self.faults.quiet("rf") and self.faults.is_active("rf", "reflected_high"):
            return 0.15
        return 0.02 if self.plasma_lit else 0.05

    # -- dynamics --------------------------------------------------------------------------
    def step(self, dt_s: float) -> None:
        """Advance the plant by dt_s of process time."""
        if dt_s <= 0:
            return
        self.process_time_s += dt_s
        self._step_plasma()
        self._step_rod_temperature(dt_s)
        self._follow_carriage()
        self._step_growth(dt_s)
        self._stroke_flows[0] += self.effective_flow("mfc_sicl4") * dt_s / 60
        self._stroke_flows[1] += self.effective_flow("mfc_dopant") * dt_s / 60

    def _step_plasma(self) -> None:
        cfg = self.config
        powered = self.rf_on and self.rf_enable
        argon = self.effective_flow("mfc_ar")
        plasma_gas = argon + self.effective_flow("mfc_o2")
        rf_faults = not self.faults.quiet("rf")
        if self.plasma_lit:
            lost = (
                not powered
                or self.rf_forward_kw < cfg.sustain_min_power_kw
                or plasma_gas < cfg.sustain_min_plasma_gas_slpm
                or (rf_faults and self.faults.is_active("rf", "flame_out"))
            )
            if lost:
                self.plasma_lit = False
                if powered:
                    self.flame_outs += 1
            return
        if not powered:
            self.ignition_failed = False  # RF off re-arms the igniter
            return
        ready = (self.rf_forward_kw >= cfg.ignition_min_power_kw
                 and argon >= cfg.ignition_min_argon_slpm)
        if not ready or self.ignition_failed:
            return
        blocked = rf_faults and (
            self.faults.is_active("rf", "ignition_fail") or self.faults.is_active("rf", "flame_out")
        )
        if blocked or self._rng.random() < cfg.ignition_failure_probability:
            self.ignition_failed = True
            return
        self.plasma_lit = True

    def _step_rod_temperature(self, dt_s: float) -> None:
        cfg = self.config
        if self.plasma_lit:
            target = cfg.ambient_c + (cfg.rod_temperature_lit_c - cfg.ambient_c) * min(
                1.0, self.rf_forward_kw / 50.0
            )
            if dt_s != self._heating_dt_s:
                self._heating_alpha = 1 - math.exp(-dt_s / cfg.rod_heating_time_constant_s)
                self._heating_dt_s = dt_s
            self.rod_temperature_c += (target - self.rod_temperature_c) * self._heating_alpha
            return
        # Explicit steps of at most max_step_s: the cooling rate changes slowly against them
        # (its time constant is tens of seconds even for a bare 30 mm rod at 1500 C).
        left = dt_s
        while left > 0:
            h = min(left, cfg.max_step_s)
            self.rod_temperature_c -= self.cooling_rate_c_s() * h
            left -= h
        self.rod_temperature_c = max(self.rod_temperature_c, cfg.ambient_c)

    def cooling_rate_c_s(self) -> float:
        """dT/dt (C/s, positive = cooling) of the rod's deposited length by radiation and natural
        convection from its surface (pi D L) over its heat capacity (rho pi D^2 L / 4 x c(T)):
        the length cancels, leaving 4 q / (rho c D)."""
        cfg = self.config
        t, ambient = self.rod_temperature_c, cfg.ambient_c
        if t <= ambient:
            return 0.0
        t_k, ambient_k = t + KELVIN, ambient + KELVIN
        flux_w_m2 = (
            cfg.rod_emissivity * STEFAN_BOLTZMANN_W_M2_K4 * (t_k**4 - ambient_k**4)
            + cfg.rod_convection_w_m2_k * (t - ambient)
        )
        density_kg_m3 = cfg.silica_density_g_cm3 * 1000.0
        diameter_m = self.rod_diameter_mm / 1000.0
        return 4 * flux_w_m2 / (density_kg_m3 * cfg.specific_heat_j_kg_k(t) * diameter_m)

    def _follow_carriage(self) -> None:
        """At each reversal, re-spread the stroke just ended over the span it really covered."""
        strokes = self._stroke_tracker()
        heading = strokes.direction
        moving = strokes.still_at is None
        reversed_now, span = strokes.follow(self.carriage_mm)
        if moving and strokes.still_at is not None:
            # A stroke that ends with the carriage at rest (a run's last pass): its record is
            # taken at the stop, before the controller, a poll later, closes the precursors.
            self._end_stroke()
        if not reversed_now:
            return
        if moving and heading != 0 and strokes.direction == -heading:  # (a stop ended it)
            self._end_stroke()
        self._stroke_flows = [0.0, 0.0]
        if span is not None:
            span = max(span, self.config.deposition_min_length_mm)
            if strokes.grams > 0 and strokes.spread_mm is not None:
                self._respread(strokes.grams, strokes.spread_mm, span)
            strokes.length_mm = span
        strokes.grams = 0.0
        strokes.spread_mm = None

    def _end_stroke(self) -> None:
        if self.precursor_valve_open and self._stroke_flows[0] > 0:
            # The preform's truth, stroke by stroke, for tests and benches: the diameter the
            # stroke ended at and what reached the torch during it.
            self.strokes.append(StrokeRecord(self.process_time_s, self.rod_diameter_mm,
                                             *self._stroke_flows))
        self._stroke_flows = [0.0, 0.0]

    def _respread(self, grams: float, laid_over_mm: float, span_mm: float) -> None:
        density = self.config.silica_density_g_cm3
        bare = grown_diameter_mm(self.rod_diameter_mm, -grams, laid_over_mm, density)
        self.rod_diameter_mm = grown_diameter_mm(bare, grams, span_mm, density)

    def _step_growth(self, dt_s: float) -> None:
        if not (self.plasma_lit and self.torch_over_rod):
            return
        grams = self.efficiency() * self.sicl4_g_min / 60.0 * SIO2_PER_SICL4 * dt_s
        if grams <= 0:
            return
        self.deposited_g += grams
        strokes = self._stroke_tracker()
        # One spread per stroke: the estimate at its first gram (it changes only at reversals).
        span = strokes.spread_mm or self.deposition_span_mm
        strokes.spread_mm = span
        strokes.grams += grams
        self.rod_diameter_mm = grown_diameter_mm(
            self.rod_diameter_mm, grams, span, self.config.silica_density_g_cm3
        )

    def snapshot(self) -> dict[str, object]:
        return {
            "process_time_s": round(self.process_time_s, 3),
            "plasma_lit": self.plasma_lit,
            "rf_on": self.rf_on,
            "rf_enable": self.rf_enable,
            "rf_forward_kw": round(self.rf_forward_kw, 3),
            "gas_flow_slpm": {k: round(v, 4) for k, v in self.gas_flow_slpm.items()},
            "spindle_rpm": round(self.spindle_rpm, 3),
            "carriage_mm": round(self.carriage_mm, 3),
            "torch_slide_mm": round(self.torch_slide_mm, 3),
            "coil_gap_mm": round(self.coil_gap_mm, 3),
            "rod_diameter_mm": round(self.rod_diameter_mm, 4),
            "rod_temperature_c": round(self.rod_temperature_c, 2),
            "deposited_g": round(self.deposited_g, 4),
            "deposition_span_mm": round(self.deposition_span_mm, 3),
            "efficiency": round(self.efficiency(), 4),
            "flame_outs": self.flame_outs,
            "heaters_on": list(self.heaters_on),
            "exhaust_fan_on": self.exhaust_fan_on,
            "master_valve_open": self.master_valve_open,
            "precursor_valve_open": self.precursor_valve_open,
            "drives_powered": self.drives_powered,
        }
