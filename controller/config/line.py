"""The line configuration: which devices the line has, on which buses, with which limits and
poll rates. Loaded from YAML (``deploy/line-sim.yaml`` for the simulated demo line) and
validated; every figure of the machine lives here, never in code (domain.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config.bus_budget import DEFAULT_BUDGET_FRACTION, budget_refusals
from drivers.transports.endpoint import Endpoint

# The line model's device groups: their one home (every other module imports them).
PROCESS_GASES = ("mfc_ar", "mfc_o2", "mfc_n2")  # the plasma's gases and the N2 screen
PLASMA_GASES = ("mfc_ar", "mfc_o2")  # what the plasma burns on: losing one puts it out
PRECURSORS = ("mfc_sicl4", "mfc_dopant")  # behind the precursor valve
MFC_NAMES = (*PROCESS_GASES, *PRECURSORS)
AXIS_NAMES = ("spindle", "carriage", "torch_slide")
LINEAR_AXES = ("carriage", "torch_slide")
DEVICE_NAMES = ("rf", "safety_io", *MFC_NAMES, *AXIS_NAMES, "diameter_gauge")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "line-sim.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusConfig(Strict):
    protocol: Literal["modbus-tcp", "modbus-rtu", "alicat-ascii", "ascii"]
    baudrate: int = 19200
    # A real line names its endpoint here; a simulated one gets it from povd-sim's endpoints file.
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str | None = None
    timeout_s: float = Field(default=0.25, gt=0, le=5)
    retries: int = Field(default=1, ge=0, le=5)
    # The share of a serial bus's time its poll plan may use (controller/config/bus_budget.py).
    budget_fraction: float = Field(default=DEFAULT_BUDGET_FRACTION, gt=0, le=1)
    # Modbus TCP: a second connection on which the safety reaction's writes pass a poll in
    # flight (drivers/transports/modbus.py); on unless turned off (false) for a device that
    # takes one connection only. A serial line has one master: never there.
    urgent_link: bool | None = None

    @model_validator(mode="after")
    def _urgent_link_on_tcp_only(self) -> BusConfig:
        if self.urgent_link and self.protocol != "modbus-tcp":
            raise ValueError(f"urgent_link: a {self.protocol} bus has one master, "
                             "a second connection exists only on modbus-tcp")
        return self

    @property
    def wants_urgent_link(self) -> bool:
        return self.protocol == "modbus-tcp" and self.urgent_link is not False

    def endpoint(self) -> Endpoint:
        return Endpoint(
            protocol=self.protocol,
            host=self.host,
            port=self.port,
            path=self.path,
            baudrate=self.baudrate,
        )


class DeviceBase(Strict):
    bus: str
    poll_hz: float = Field(gt=0, le=1000)
    # Wall time without a good reply after which the link counts as lost (rule 7: wall time).
    link_timeout_s: float = Field(default=1.0, gt=0, le=30)


class RfGeneratorConfig(DeviceBase):
    kind: Literal["rf_generator"]
    unit: int = Field(ge=1, le=247)
    max_power_kw: float = Field(gt=0)
    max_slew_kw_s: float = Field(gt=0)
    reflected_trip_fraction: float = Field(gt=0, lt=1)
    frequency_mhz: float = Field(gt=0)


class MfcConfig(DeviceBase):
    kind: Literal["mfc"]
    unit: int | str
    gas: str
    gas_number: int = Field(ge=0)
    full_scale_slpm: float = Field(gt=0)
    purge_slpm: float = Field(default=0.0, ge=0)
    # Mass flow per slpm of vapour, for precursors set in g/min; states its standard.
    grams_per_min_per_slpm: float | None = Field(default=None, gt=0)
    standard_temperature_c: float = 0.0

    def g_min_for(self, slpm: float) -> float:
        """Mass flow (g/min) of a vapour flow in slpm, at the standard this MFC states."""
        return slpm * self._grams_per_slpm()

    def slpm_for(self, g_min: float) -> float:
        """The setpoint in slpm (at the standard this MFC states) for a mass flow in g/min."""
        return g_min / self._grams_per_slpm()

    def _grams_per_slpm(self) -> float:
        if self.grams_per_min_per_slpm is None:
            raise ValueError(f"the {self.gas} MFC has no grams_per_min_per_slpm")
        return self.grams_per_min_per_slpm

    @model_validator(mode="after")
    def _unit_matches_protocol(self) -> MfcConfig:
        if isinstance(self.unit, str) and not (len(self.unit) == 1 and self.unit.isupper()):
            raise ValueError(f"an Alicat unit id is one letter A-Z, got {self.unit!r}")
        if self.purge_slpm > self.full_scale_slpm:
            raise ValueError("purge_slpm exceeds full scale")
        return self


class ServoAxisConfig(DeviceBase):
    kind: Literal["servo_axis"]
    unit: int = Field(ge=1, le=247)
    motion: Literal["rotary", "linear"]
    # rotary: speeds in rpm; linear: positions in mm and speeds in mm/min.
    min_position_mm: float = 0.0
    max_position_mm: float = 0.0
    max_speed: float = Field(gt=0)
    acceleration: float = Field(gt=0)  # rpm/s or mm/s^2
    park_position_mm: float | None = None
    cooling_speed_rpm: float | None = None
    setup_speed_fraction: float = Field(default=0.10, gt=0, le=1)
    maintenance_speed_cap: float | None = Field(default=None, gt=0)
    # The drive's communication watchdog (set at connect): with no request for this long, a
    # linear axis stops with an alarm and a rotary one goes to its cooling speed (rule 11).
    comm_watchdog_s: float = Field(default=1.0, gt=0, le=30)

    @property
    def setup_speed(self) -> float:
        """The reduced speed allowed with a door open (rule 6)."""
        return self.max_speed * self.setup_speed_fraction

    @model_validator(mode="after")
    def _cooling_at_setup_speed(self) -> ServoAxisConfig:
        # Rule 6: a hot rod keeps turning with a door open, so its speed must be one allowed.
        if self.cooling_speed_rpm is not None and self.cooling_speed_rpm > self.setup_speed:
            raise ValueError(f"cooling_speed_rpm {self.cooling_speed_rpm:g} exceeds the setup "
                             f"speed {self.setup_speed:g} (rule 6)")
        return self

    @model_validator(mode="after")
    def _travel(self) -> ServoAxisConfig:
        if self.motion == "linear":
            if self.max_position_mm <= self.min_position_mm:
                raise ValueError("max_position_mm must exceed min_position_mm")
            park = self.park_position_mm
            if park is not None and not self.min_position_mm <= park <= self.max_position_mm:
                raise ValueError("park_position_mm lies outside travel")
        return self


class SafetyIoConfig(DeviceBase):
    kind: Literal["safety_io"]
    unit: int = Field(ge=1, le=247)
    heartbeat_timeout_s: float = Field(default=1.0, gt=0)
    water_flow_min_l_min: float = 20.0
    water_temp_max_c: float = 35.0
    exhaust_trip_pa: float = -20.0
    gas_supply_min_bar: float = 2.0
    gas_detector_trip_ppm: float = 1.0  # acid gas: Cl2 / HCl / HF
    # Room O2 monitor: enrichment above this trips like the gas detector (rule 1).
    room_o2_trip_pct: float = Field(default=23.5, gt=20.9, le=100)
    # Below this the rod may stop turning (rule 1); above it the spindle keeps the cooling speed.
    rod_rotation_stop_c: float = 300.0
    # After a heartbeat loss the PLC closes the master valve once this purge (process seconds)
    # has run, at once while the exhaust, scrubber, gas detector or O2 monitor is in trip.
    heartbeat_loss_purge_s: float = Field(default=60.0, ge=0)


class DiameterGaugeConfig(DeviceBase):
    kind: Literal["diameter_gauge"]
    min_mm: float = 5.0
    max_mm: float = 120.0
    resolution_mm: float = 0.01


DeviceConfig = Annotated[
    RfGeneratorConfig | MfcConfig | ServoAxisConfig | SafetyIoConfig | DiameterGaugeConfig,
    Field(discriminator="kind"),
]


class GeometryConfig(Strict):
    """Where things are on the machine, in carriage and slide coordinates."""

    turning_point_a_mm: float = 300.0
    turning_point_b_mm: float = 900.0
    # Coil-to-rod-axis distance with the torch slide at 0 mm; the slide backs off from there.
    coil_to_axis_at_slide_zero_mm: float = 30.0
    bait_rod_diameter_mm: float = 30.0


class SupervisionConfig(Strict):
    """How the supervisor reacts: figures an engineer tunes per line."""

    idle_power_kw: float = Field(default=15.0, gt=0)  # plasma kept at this power on hold
    reignite_attempts: int = Field(default=3, ge=0, le=10)
    purge_before_reignite_s: float = Field(default=20.0, ge=0)  # process seconds
    cooldown_max_s: float = Field(default=1800.0, gt=0)  # process seconds
    stop_ramp_down_kw_s: float = Field(default=5.0, gt=0)
    position_tolerance_mm: float = Field(default=0.5, gt=0)
    carriage_reposition_mm_min: float = Field(default=1500.0, gt=0)
    torch_slide_mm_min: float = Field(default=300.0, gt=0)
    diameter_correction_limits: tuple[float, float] = (0.6, 1.6)  # SiCl4 scale bounds
    telemetry_record_hz: float = Field(default=1.0, gt=0)
    # The controller's prior for the deposition efficiency, until the gauge has measured it.
    nominal_efficiency: float = Field(default=0.5, gt=0, le=1)
    # Early warnings before a trip: how close, and for how long (wall seconds).
    water_flow_margin_l_min: float = Field(default=3.0, ge=0)
    exhaust_margin_pa: float = Field(default=10.0, ge=0)
    reflected_warning_fraction: float = Field(default=0.5, gt=0, le=1)  # of the trip fraction
    warning_delay_s: float = Field(default=5.0, ge=0)
    # A device test (gas flow, torch at low power) ends by itself unless repeated within this.
    device_test_lease_s: float = Field(default=60.0, gt=0)
    # A continuous jog stops by itself unless renewed within this (clients renew every 0.1 s).
    jog_lease_s: float = Field(default=0.5, gt=0, le=5)
    # A device test of the torch runs at this power at most ("the torch at low power").
    device_test_max_power_kw: float = Field(default=15.0, gt=0)
    # An output outside the envelope that has not followed its correction in this long (wall
    # seconds) raises an alarm and escalates (precursor valve, master valve, RF permit...).
    follow_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # After a trip that allows purging, the process gases purge this long (process seconds)
    # before every gas goes off and the valves close (rule 11).
    post_trip_purge_s: float = Field(default=60.0, ge=0)
    # A flow below this (slpm) counts as no gas flowing, for "at rest".
    rest_flow_slpm: float = Field(default=0.2, ge=0)
    # A durable record (a command's audit, a pass, a state change) that has not reached the disk
    # in this long (wall seconds) counts as the records being unavailable: the run holds (rule 9).
    records_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # The safety cycle late by more than one period raises an alarm; by more than this (wall
    # seconds) the run holds: a starved event loop cannot watch the machine.
    max_safety_gap_s: float = Field(default=0.25, gt=0, le=5)
    # The longest an operator may shelve an alarm (wall seconds): a shift. It comes back by
    # itself after that.
    alarm_shelve_max_s: float = Field(default=8 * 3600.0, gt=0, le=7 * 24 * 3600)


class LineConfig(Strict):
    line: str
    machine: str
    buses: dict[str, BusConfig]
    devices: dict[str, DeviceConfig]
    geometry: GeometryConfig = GeometryConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    # Read by povd-sim only (the simulated plant's physics); the controller ignores it.
    plant: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> LineConfig:
        missing = [n for n in DEVICE_NAMES if n not in self.devices]
        if missing:
            raise ValueError(f"devices missing: {', '.join(missing)}")
        for name, device in self.devices.items():
            if device.bus not in self.buses:
                raise ValueError(f"device {name}: unknown bus {device.bus!r}")
        refusals = budget_refusals(self.buses, self.devices.values())
        if refusals:
            raise ValueError("; ".join(refusals))
        return self

    def device(self, name: str) -> DeviceConfig:
        return self.devices[name]

    def mfc(self, name: str) -> MfcConfig:
        device = self.devices[name]
        assert isinstance(device, MfcConfig), name
        return device

    def axis(self, name: str) -> ServoAxisConfig:
        device = self.devices[name]
        assert isinstance(device, ServoAxisConfig), name
        return device

    def rf(self) -> RfGeneratorConfig:
        device = self.devices["rf"]
        assert isinstance(device, RfGeneratorConfig)
        return device

    def safety_io(self) -> SafetyIoConfig:
        device = self.devices["safety_io"]
        assert isinstance(device, SafetyIoConfig)
        return device

    def gauge(self) -> DiameterGaugeConfig:
        device = self.devices["diameter_gauge"]
        assert isinstance(device, DiameterGaugeConfig)
        return device


def cooling_speed_rpm(line: LineConfig) -> float:
    """The spindle's cooling speed: configured, else setup speed (never above it, rule 6)."""
    spindle = line.axis("spindle")
    return spindle.cooling_speed_rpm if spindle.cooling_speed_rpm is not None \
        else spindle.setup_speed


class ConfigError(Exception):
    def __init__(self, path: Path, errors: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(errors))
        self.path = path
        self.errors = errors


def load_line_config(path: Path | None = None) -> LineConfig:
    path = path or DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(path, [str(exc)]) from exc
    try:
        return LineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            path,
            [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()],
        ) from exc
