"""The simulated plant: the physics every simulated device shares.

Device simulators write what their hardware does to the plant (actual gas flows, forward RF
power, axis positions) and read what they sense from it (plasma lit, rod temperature,
diameter). ``Plant.step`` then advances ignition, flame-out, rod heating and the preform's
growth by one process-time step. Figures come from the line configuration's ``plant`` section
(estimates from domain.md), never from constants here."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from controller.config.line import MFC_NAMES, PRECURSORS, GeometryConfig, LineConfig, MfcConfig
from controller.recipes.process_model import SIO2_PER_SICL4, grown_diameter_mm
from simulators.faults import FaultBoard


class PlantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mfc_time_constant_s: float = Field(default=0.5, gt=0)
    rod_thermal_time_constant_s: float = Field(default=30.0, gt=0)
    ignition_min_power_kw: float = 10.0
    ignition_min_argon_slpm: float = 20.0
    ignition_failure_probability: float = Field(default=0.0, ge=0, le=1)
    sustain_min_power_kw: float = 8.0
    sustain_min_plasma_gas_slpm: float = 20.0
    efficiency_nominal: float = Field(default=0.5, gt=0, le=1)
    efficiency_power_window_kw: tuple[float, float] = (30.0, 80.0)
    efficiency_gap_window_mm: tuple[float, float] = (25.0, 35.0)
    deposition_length_mm: float = Field(default=600.0, gt=0)
    silica_density_g_cm3: float = Field(default=2.203, gt=0)
    rod_temperature_lit_c: float = 1500.0
    ambient_c: float = 25.0
    water_flow_l_min: float = 25.0
    water_temp_c: float = 22.0
    exhaust_draft_pa: float = -50.0  # with the exhaust fan running (0 Pa without it)
    room_o2_pct: float = 20.9  # the room O2 monitor's reading in fresh air
    gas_supply_bar: float = 5.0
    seed: int = 1


def _window_factor(value: float, low: float, high: float, fall: float) -> float:
    """1 inside [low, high], falling linearly to 0 over ``fall`` outside it."""
    if value < low:
        return max(0.0, 1 - (low - value) / fall)
    if value > high:
        return max(0.0, 1 - (value - high) / fall)
    return 1.0


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
        fault = self.faults.active("plant", "efficiency_drift")
        if fault is not None:
            drift += float(fault.params.get("fraction", -0.2))
        p_low, p_high = self.config.efficiency_power_window_kw
        g_low, g_high = self.config.efficiency_gap_window_mm
        power = _window_factor(self.rf_forward_kw, p_low, p_high, 20.0)
        gap = _window_factor(self.coil_gap_mm, g_low, g_high, 15.0)
        return max(0.0, self.config.efficiency_nominal * power * gap * (1 + drift))

    @property
    def reflected_fraction(self) -> float:
        if self.faults.is_active("rf", "reflected_high"):
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
        self._step_growth(dt_s)

    def _step_plasma(self) -> None:
        cfg = self.config
        powered = self.rf_on and self.rf_enable
        argon = self.effective_flow("mfc_ar")
        plasma_gas = argon + self.effective_flow("mfc_o2")
        if self.plasma_lit:
            lost = (
                not powered
                or self.rf_forward_kw < cfg.sustain_min_power_kw
                or plasma_gas < cfg.sustain_min_plasma_gas_slpm
                or self.faults.is_active("rf", "flame_out")
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
        blocked = self.faults.is_active("rf", "ignition_fail") or self.faults.is_active(
            "rf", "flame_out"
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
        else:
            target = cfg.ambient_c
        alpha = 1 - math.exp(-dt_s / cfg.rod_thermal_time_constant_s)
        self.rod_temperature_c += (target - self.rod_temperature_c) * alpha

    def _step_growth(self, dt_s: float) -> None:
        if not (self.plasma_lit and self.torch_over_rod):
            return
        grams = self.efficiency() * self.sicl4_g_min / 60.0 * SIO2_PER_SICL4 * dt_s
        if grams <= 0:
            return
        self.deposited_g += grams
        self.rod_diameter_mm = grown_diameter_mm(
            self.rod_diameter_mm,
            grams,
            self.config.deposition_length_mm,
            self.config.silica_density_g_cm3,
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
            "efficiency": round(self.efficiency(), 4),
            "flame_outs": self.flame_outs,
            "heaters_on": list(self.heaters_on),
            "exhaust_fan_on": self.exhaust_fan_on,
            "master_valve_open": self.master_valve_open,
            "precursor_valve_open": self.precursor_valve_open,
            "drives_powered": self.drives_powered,
        }
