"""Simulated servo drive (spindle, carriage, torch slide) on the drive bus.

Speaks the register map of docs/devices.md ("Servo drives") through
``drivers.codecs.servo_map``. Motion is a trapezoidal profile with the configured velocity
and acceleration limits, integrated analytically phase by phase in process time, so a step of
several seconds neither overshoots a target nor crosses a travel end. The drive writes what
its motor does to the plant (spindle rpm, carriage or torch-slide position) by its name.

Drive-side oscillation (HR 13-21, control bit 7): a homed linear axis travels to turning point
1, then runs strokes between the two turning points, reversing by itself at each (the time left
in a step after a reversal carries into the next stroke, so any step size integrates the same
strokes). The speed (HR 17-18) and the stroke count (HR 21) are read at every reversal: a new
speed applies from the next pass, a count at or below the strokes done ends the oscillation at
the next turning point. Every stop path (stop, disable, alarm, watchdog, limit switch, power
loss, any other motion command) ends it at once.

Communication watchdog (HR 10-12): once armed, a drive that has heard no request for
``comm_watchdog_ms`` of WALL time (domain.md rule 7; ``step``'s ``wall_now``) raises alarm
COMM_WATCHDOG: a linear axis decelerates to a stop and disables, a rotary axis (enabled) runs
at the watchdog velocity and keeps turning (a hot rod must not stop). Every request to the
unit, read or write, feeds it (``on_request``, stamped at the next step)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import structlog

from controller.config.line import ServoAxisConfig
from drivers.codecs import servo_map
from drivers.codecs.servo_map import AlarmCode, AxisMode, AxisStatus, Control
from simulators.faults import FaultBoard
from simulators.modbus_bus import ILLEGAL_VALUE, RegisterDevice
from simulators.plant import Plant

log = structlog.get_logger(__name__)

POSITION_TOLERANCE = 1e-6  # mm or degree: closer than this is "there" (the map resolves 0.001)
VELOCITY_TOLERANCE = 1e-6  # mm/s or degree/s
MAX_PHASES_PER_STEP = 32  # a profile has at most four phases; the rest is float slack
# Reversals integrated within one step: turning points at least 0.001 mm apart take >= ~3 ms a
# stroke at the demo carriage's acceleration, so a 50 ms step never needs more than a few dozen.
MAX_REVERSALS_PER_STEP = 64
DEGREES_PER_REV = 360.0
# Cosmetic load model (IR 7): friction share, plus shares for speed and for acceleration.
LOAD_BASE_PERCENT = 5.0
LOAD_SPEED_PERCENT = 10.0
LOAD_ACCEL_PERCENT = 40.0
DEFAULT_ALARM_CODE = AlarmCode.OVERLOAD


# -- kinematics (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class Motion:
    position: float
    velocity: float
    arrived: bool = False
    left_s: float = 0.0  # of the step, once arrived: an oscillation runs on with it


def _phase_toward(
    distance: float, speed_toward: float, cruise: float, accel: float
) -> tuple[float, float, float, bool]:
    """The current phase of a move ``distance`` (> 0) away at ``speed_toward`` (signed, toward
    the target): (acceleration, duration, speed at its end, ends at the target)."""
    u, a = speed_toward, accel
    if u < 0:  # moving away: brake to rest first
        return a, -u / a, 0.0, False
    stopping = u * u / (2 * a)
    if stopping >= distance - POSITION_TOLERANCE or cruise <= 0:
        return -a, u / a, 0.0, abs(stopping - distance) <= 1e-3
    if u > cruise:
        # Decelerating keeps (stopping distance - remaining distance) constant: no overshoot.
        return -a, (u - cruise) / a, cruise, False
    if u < cruise:
        to_cruise = (cruise - u) / a
        # Accelerating, stopping distance meets remaining distance (a triangular profile).
        to_meet = (-u + math.sqrt(u * u + a * (distance - stopping))) / a
        if to_meet < to_cruise:
            return a, to_meet, u + a * to_meet, False
        return a, to_cruise, cruise, False
    return 0.0, (distance - stopping) / cruise, cruise, False


def advance_to_position(
    position: float, velocity: float, *, target: float, cruise: float, accel: float, dt: float
) -> Motion:
    """Advance a trapezoidal move toward ``target`` by ``dt``: speed at most ``cruise`` (>= 0),
    acceleration ``accel`` (> 0), ending at rest exactly on the target."""
    p, v, left = position, velocity, dt
    for _ in range(MAX_PHASES_PER_STEP):
        d = target - p
        if abs(d) <= POSITION_TOLERANCE and abs(v) <= VELOCITY_TOLERANCE:
            return Motion(target, 0.0, arrived=True, left_s=max(left, 0.0))
        if left <= 0:
            break
        if abs(d) > POSITION_TOLERANCE:
            direction = 1.0 if d > 0 else -1.0
        else:
            direction = -1.0 if v > 0 else 1.0  # on the target but moving: brake, come back
        acc, duration, end_speed, lands = _phase_toward(abs(d), v * direction, cruise, accel)
        u = v * direction
        h = min(duration, left)
        if h >= duration:
            travelled, u = (u + end_speed) / 2 * duration, end_speed
        else:
            travelled, u = u * h + acc * h * h / 2, u + acc * h
        p += direction * travelled
        v = direction * u
        left -= h
        if lands and h >= duration:
            return Motion(target, 0.0, arrived=True, left_s=max(left, 0.0))
    return Motion(p, v)


def advance_to_velocity(
    position: float, velocity: float, *, target: float, accel: float, dt: float
) -> Motion:
    """Advance a ramp toward ``target`` velocity at ``accel`` by ``dt``."""
    change = target - velocity
    duration = abs(change) / accel
    if dt >= duration:
        travelled = (velocity + target) / 2 * duration + target * (dt - duration)
        return Motion(position + travelled, target, arrived=True)
    acc = math.copysign(accel, change)
    return Motion(position + velocity * dt + acc * dt * dt / 2, velocity + acc * dt)


@dataclass(frozen=True)
class PositionProfile:
    target: float
    cruise: float  # internal units per second
    accel: float
    ends: str  # "target", "home", "limit+", "limit-", "stop", "oscillate"


@dataclass(frozen=True)
class VelocityProfile:
    target: float
    accel: float
    ends: str  # "speed", "stop"


Profile = PositionProfile | VelocityProfile


@dataclass
class OscillationRun:
    """A running drive-side oscillation: internal units (mm, mm/s, mm/s^2)."""

    turning_points: tuple[float, float]
    accel: float
    heading: int = 0  # index of the turning point travelled to
    approaching: bool = True  # the travel to turning point 1 is not a stroke


# -- the drive ---------------------------------------------------------------------------------
class ServoAxisSim(RegisterDevice):
    """One drive. Internally positions are mm (rotary: degrees), velocities per second."""

    def __init__(
        self, name: str, config: ServoAxisConfig, plant: Plant, faults: FaultBoard
    ) -> None:
        super().__init__(
            name=name,
            unit=config.unit,
            holding_size=servo_map.HOLDING_COUNT,
            input_size=servo_map.INPUT_COUNT,
        )
        self.config = config
        self.plant = plant
        self.faults = faults
        self.rotary = config.motion == "rotary"
        # User speed units (rpm, mm/min) and accelerations (rpm/s, mm/s^2) to internal ones.
        self._speed_k = DEGREES_PER_REV / 60 if self.rotary else 1 / 60
        self._accel_k = DEGREES_PER_REV / 60 if self.rotary else 1.0
        park = config.park_position_mm
        self.position = 0.0 if self.rotary or park is None else park
        if not self.rotary and park is None:
            self.position = config.min_position_mm
        self.velocity = 0.0
        self.enabled = False
        self.homed = False
        self.alarm_code: int = AlarmCode.NONE
        self.limit_positive = False
        self.limit_negative = False
        self.mode = AxisMode.NONE
        self.target_reached = False
        self.jog_direction = 0
        self.profile: Profile | None = None
        self.oscillation: OscillationRun | None = None
        self.strokes_done = 0
        self._commanded_accel = config.acceleration * self._accel_k
        self._max_speed = config.max_speed * self._speed_k  # internal units, for the load
        self._max_accel = config.acceleration * self._accel_k
        self._watchdog_word = 0  # HR_COMM_WATCHDOG as last decoded, and its seconds
        self._watchdog_s = servo_map.decode_comm_watchdog_s(0)
        self._drift = 0.0
        self._stuck_at: float | None = None
        self._load_percent = LOAD_BASE_PERCENT
        self._request_pending = False
        self._last_request_wall: float | None = None
        self.watchdog_fired = False  # fired since the last request
        self._log = log.bind(device=name, unit=config.unit)
        self._write_plant()
        self.refresh()

    # -- stepping ------------------------------------------------------------------------------
    def step(self, dt_s: float, wall_now: float) -> None:
        self._watch_comm(wall_now)
        self._supervise()
        if dt_s <= 0:
            return
        drift = None if self.faults.quiet(self.name) else self.faults.active(self.name, "drift")
        self._drift = (
            self._drift + float(drift.params.get("rate_per_s", 0.0)) * dt_s if drift else 0.0
        )
        before = self.velocity
        self._advance(dt_s)
        self._update_load(abs(self.velocity - before) / dt_s)
        self._write_plant()

    def _advance(self, dt_s: float) -> None:
        left = dt_s
        for _ in range(MAX_REVERSALS_PER_STEP):
            profile = self.profile
            if profile is None:
                return
            if isinstance(profile, VelocityProfile):
                moved = advance_to_velocity(
                    self.position, self.velocity, target=profile.target, accel=profile.accel,
                    dt=left,
                )
            else:
                moved = advance_to_position(
                    self.position,
                    self.velocity,
                    target=profile.target,
                    cruise=profile.cruise,
                    accel=profile.accel,
                    dt=left,
                )
            self.position, self.velocity = moved.position, moved.velocity
            if self.rotary:
                self.position %= DEGREES_PER_REV
            else:
                self.position = min(
                    max(self.position, self.config.min_position_mm), self.config.max_position_mm
                )
            if not moved.arrived:
                return
            self._arrive(profile)
            # Only a reversal starts a new profile at once: it runs on with the rest of the step.
            if self.profile is None or self.profile is profile or moved.left_s <= 0:
                return
            left = moved.left_s

    def _arrive(self, profile: Profile) -> None:
        if isinstance(profile, VelocityProfile):
            # At speed: velocity mode and a rotary jog keep running; a stop is over.
            self.target_reached = profile.ends == "speed"
            if profile.target == 0.0:
                self.profile = None
            return
        self.profile = None
        self.velocity = 0.0
        if profile.ends == "oscillate":
            self._reverse()
        elif profile.ends == "home":
            self.homed = True
            self.target_reached = True
            self._log.info("servo_sim.homed", position_mm=self.position)
        elif profile.ends == "target":
            self.target_reached = True
        elif profile.ends == "limit+":
            self.limit_positive = True
            self.jog_direction = 0
        elif profile.ends == "limit-":
            self.limit_negative = True
            self.jog_direction = 0

    def _reverse(self) -> None:
        """At a turning point: count the stroke, then end or run the next one."""
        run = self.oscillation
        if run is None:
            return
        if run.approaching:
            run.approaching = False
        else:
            self.strokes_done += 1
        strokes = self.holding[servo_map.HR_OSC_STROKES]
        speed = self._osc_speed(self.holding) * self._speed_k
        if (strokes and self.strokes_done >= strokes) or speed <= 0:
            self._end_oscillation("strokes done")
            self.target_reached = True
            return
        run.heading = 1 - run.heading
        target = run.turning_points[run.heading]
        self.profile = PositionProfile(target, speed, run.accel, "oscillate")

    def _end_oscillation(self, reason: str) -> None:
        if self.oscillation is not None:
            self._log.info("servo_sim.oscillation_ended", reason=reason,
                           strokes_done=self.strokes_done)
        self.oscillation = None

    @property
    def oscillating(self) -> bool:
        return self.oscillation is not None

    def _update_load(self, accel_now: float) -> None:
        self._load_percent = (
            LOAD_BASE_PERCENT
            + LOAD_SPEED_PERCENT * min(1.0, abs(self.velocity) / self._max_speed)
            + LOAD_ACCEL_PERCENT * min(1.0, accel_now / self._max_accel)
        )

    def _write_plant(self) -> None:
        if self.name == "spindle":
            self.plant.spindle_rpm = self.velocity / self._speed_k
        elif self.name == "carriage":
            self.plant.carriage_mm = self.position
            run = self.oscillation
            # The drive knows its own turning points: the plant's first stroke spreads over them
            # (there is no measured stroke behind it yet).
            self.plant.carriage_turning_points = None if run is None else run.turning_points
        elif self.name == "torch_slide":
            self.plant.torch_slide_mm = self.position

    # -- communication watchdog ----------------------------------------------------------------
    def on_request(self) -> None:
        self._request_pending = True

    @property
    def comm_watchdog_s(self) -> float:
        # Read every sub-step and written about once a run: decoded when the word changes.
        word = self.holding[servo_map.HR_COMM_WATCHDOG]
        if word != self._watchdog_word:
            self._watchdog_word = word
            self._watchdog_s = servo_map.decode_comm_watchdog_s(word)
        return self._watchdog_s

    @property
    def watchdog_velocity(self) -> float:
        at = servo_map.HR_WATCHDOG_VELOCITY
        return servo_map.decode_velocity(self.holding[at : at + 2])

    def _watch_comm(self, wall_now: float) -> None:
        if self._request_pending:
            self._request_pending = False
            self._last_request_wall = wall_now
            self.watchdog_fired = False
        timeout = self.comm_watchdog_s
        if timeout <= 0 or self._last_request_wall is None or self.watchdog_fired:
            return
        if wall_now - self._last_request_wall >= timeout:
            self._comm_watchdog_fire()

    def _comm_watchdog_fire(self) -> None:
        self.watchdog_fired = True
        if self.alarm_code == AlarmCode.NONE:
            self.alarm_code = AlarmCode.COMM_WATCHDOG  # a latched earlier alarm keeps its code
        self._log.warning("servo_sim.comm_watchdog", rotary=self.rotary)
        if not self.rotary:
            self._disable("comm watchdog")
            return
        if self.enabled:
            accel = self.config.acceleration * self._accel_k
            self._commanded_accel = accel
            self.jog_direction = 0
            self._run_velocity(AxisMode.VELOCITY, self.watchdog_velocity * self._speed_k, accel)

    # -- supervision: power, alarms ------------------------------------------------------------
    def _supervise(self) -> None:
        quiet = self.faults.quiet(self.name)
        fault = None if quiet else self.faults.active(self.name, "drive_alarm")
        if fault is not None and self.alarm_code == AlarmCode.NONE:
            self.alarm_code = int(fault.params.get("code", DEFAULT_ALARM_CODE))
            self._log.warning("servo_sim.alarm", code=self.alarm_code)
            self._disable("alarm")
        if not self.plant.drives_powered and self.enabled:
            self._disable("power lost")
        if not quiet:
            self._watch_limit_switch()

    def _watch_limit_switch(self) -> None:
        """A tripped limit switch stops motion toward it at the maximum deceleration and ends
        an oscillation; moving away (backing off the switch) stays possible."""
        fault = self.faults.active(self.name, "limit_switch")
        if fault is None or self.rotary:
            return
        side = -1 if str(fault.params.get("side", "positive")) in ("negative", "-", "-1") else 1
        if self.velocity * side <= VELOCITY_TOLERANCE and not self.oscillating:
            return
        profile = self.profile
        if isinstance(profile, PositionProfile) and profile.ends == "stop":
            return  # already braking
        self._log.warning("servo_sim.limit_switch", side=side)
        self._stop(self.config.acceleration * self._accel_k)
        if side > 0:
            self.limit_positive = True
        else:
            self.limit_negative = True

    def _disable(self, reason: str) -> None:
        """Power stage off: the motor ramps down at the drive's maximum deceleration."""
        if self.enabled:
            self._log.info("servo_sim.disabled", reason=reason)
        self.enabled = False
        self._stop(self.config.acceleration * self._accel_k)

    def _stop(self, accel: float) -> None:
        self.target_reached = False
        self.jog_direction = 0
        self._end_oscillation("stopped")
        if abs(self.velocity) <= VELOCITY_TOLERANCE:
            self.velocity = 0.0
            self.profile = None
            return
        if self.rotary:
            self.profile = VelocityProfile(0.0, accel, "stop")
            return
        stopping = self.velocity * abs(self.velocity) / (2 * accel)
        target = min(
            max(self.position + stopping, self.config.min_position_mm), self.config.max_position_mm
        )
        self.profile = PositionProfile(target, abs(self.velocity), accel, "stop")

    # -- register interface --------------------------------------------------------------------
    def refresh(self) -> None:
        self._supervise()
        control = Control.ENABLE if self.enabled else Control(0)
        if self.jog_direction > 0:
            control |= Control.JOG_POSITIVE
        elif self.jog_direction < 0:
            control |= Control.JOG_NEGATIVE
        self.holding[servo_map.HR_CONTROL] = int(control)
        self.inputs[:] = servo_map.encode_inputs(self.status())

    def status(self) -> AxisStatus:
        reported = self._reported_position()
        moving = abs(self.velocity) > VELOCITY_TOLERANCE
        return AxisStatus(
            enabled=self.enabled,
            moving=moving,
            in_position=self.target_reached,
            homed=self.homed,
            limit_positive=self.limit_positive,
            limit_negative=self.limit_negative,
            alarm=self.alarm_code != AlarmCode.NONE,
            alarm_code=int(self.alarm_code),
            position_mm=reported,
            velocity=self.velocity / self._speed_k,
            mode=self.mode,
            powered=self.plant.drives_powered,
            following_error_mm=reported - self.position,
            load_percent=self._load_percent if self.enabled or moving else 0.0,
            oscillating=self.oscillating,
            strokes_done=self.strokes_done,
        )

    def _reported_position(self) -> float:
        """What the encoder says: frozen by 'stuck', offset by 'drift'."""
        position = self.position
        drift = self.faults.active(self.name, "drift")
        if drift is not None:
            position += float(drift.params.get("offset", 0.0)) + self._drift
        if self.faults.is_active(self.name, "stuck"):
            if self._stuck_at is None:
                self._stuck_at = position
            return self._stuck_at
        self._stuck_at = None
        return position

    def on_write(self, address: int, values: list[int]) -> int | None:
        image = list(self.holding)
        image[address : address + len(values)] = values
        if not self._setpoints_valid(image):
            return ILLEGAL_VALUE
        self.holding[servo_map.HR_MODE :] = image[servo_map.HR_MODE :]
        if address == servo_map.HR_CONTROL:
            return self._on_control(values[0])
        return None

    def _setpoints_valid(self, image: list[int]) -> bool:
        if image[servo_map.HR_MODE] not in {m.value for m in AxisMode}:
            return False
        max_counts = round(self.config.max_speed * servo_map.VELOCITY_SCALE)
        max_accel_counts = round(self.config.acceleration * servo_map.ACCELERATION_SCALE)
        velocity = abs(self._read_velocity(image)) * servo_map.VELOCITY_SCALE
        accel = self._read_accel(image) * servo_map.ACCELERATION_SCALE
        jog = servo_map.decode_speed(image[servo_map.HR_JOG_SPEED : servo_map.HR_JOG_SPEED + 2])
        at = servo_map.HR_WATCHDOG_VELOCITY
        fallback = abs(servo_map.decode_velocity(image[at : at + 2])) * servo_map.VELOCITY_SCALE
        osc_speed = round(self._osc_speed(image) * servo_map.VELOCITY_SCALE)
        at = servo_map.HR_OSC_ACCELERATION
        osc_accel = servo_map.decode_acceleration(image[at : at + 2]) * servo_map.ACCELERATION_SCALE
        return (
            round(velocity) <= max_counts
            and round(accel) <= max_accel_counts
            and round(jog * servo_map.VELOCITY_SCALE) <= max_counts
            and round(fallback) <= max_counts
            and osc_speed <= max_counts
            and round(osc_accel) <= max_accel_counts
            # A running oscillation's next pass needs a speed: 0 would never reach its end.
            and not (self.oscillating and osc_speed == 0)
        )

    @staticmethod
    def _osc_speed(image: list[int]) -> float:
        at = servo_map.HR_OSC_SPEED
        return servo_map.decode_speed(image[at : at + 2])

    @staticmethod
    def _read_velocity(image: list[int]) -> float:
        at = servo_map.HR_TARGET_VELOCITY
        return servo_map.decode_velocity(image[at : at + 2])

    @staticmethod
    def _read_accel(image: list[int]) -> float:
        at = servo_map.HR_ACCELERATION
        return servo_map.decode_acceleration(image[at : at + 2])

    # -- control word --------------------------------------------------------------------------
    def _on_control(self, word: int) -> int | None:
        if word & ~int(servo_map.CONTROL_MASK):
            return ILLEGAL_VALUE
        control = Control(word)
        commands = control & servo_map.COMMAND_BITS
        if not commands:
            return self._set_enabled(Control.ENABLE in control)
        if Control.ENABLE not in control:
            return ILLEGAL_VALUE  # a command word carries the enable level, set
        motions = [
            c
            for c in (
                Control.START,
                Control.HOME,
                Control.JOG_POSITIVE,
                Control.JOG_NEGATIVE,
                Control.OSCILLATE,
            )
            if c in control
        ]
        if len(motions) > 1:
            return ILLEGAL_VALUE
        if Control.RESET_ALARM in control:
            self._reset_alarm()
        if Control.STOP in control:
            self._stop(self._commanded_accel)
            return None
        if not motions:
            return None
        if not self.enabled:
            return ILLEGAL_VALUE
        motion = motions[0]
        if motion is Control.START:
            return self._start()
        if motion is Control.HOME:
            return self._home()
        if motion is Control.OSCILLATE:
            return self._oscillate()
        return self._jog(1 if motion is Control.JOG_POSITIVE else -1)

    def _set_enabled(self, on: bool) -> int | None:
        if not on:
            self._disable("commanded")
            return None
        if self.alarm_code != AlarmCode.NONE or not self.plant.drives_powered:
            return ILLEGAL_VALUE
        if self.jog_direction:
            self._stop(self._commanded_accel)  # the jog bit was released
        if not self.enabled:
            self._log.info("servo_sim.enabled")
        self.enabled = True
        return None

    def _reset_alarm(self) -> None:
        if self.alarm_code == AlarmCode.NONE:
            return
        if self.faults.is_active(self.name, "drive_alarm"):
            self._log.info("servo_sim.reset_refused", code=self.alarm_code)
            return
        self._log.info("servo_sim.alarm_reset", code=self.alarm_code)
        self.alarm_code = AlarmCode.NONE

    def _begin(self, mode: AxisMode, profile: Profile | None) -> None:
        self._end_oscillation(f"new motion: {mode.name.lower()}")
        self.mode = mode
        self.profile = profile
        self.target_reached = False
        self.limit_positive = self.limit_negative = False

    def _start(self) -> int | None:
        mode = AxisMode(self.holding[servo_map.HR_MODE])
        accel_register = self._read_accel(self.holding)
        accel = (accel_register or self.config.acceleration) * self._accel_k
        velocity = self._read_velocity(self.holding) * self._speed_k
        if mode is AxisMode.HOMING:
            return self._home()
        if mode is AxisMode.VELOCITY:
            self._commanded_accel = accel
            self._run_velocity(mode, velocity, accel)
            return None
        if mode not in (AxisMode.POSITION_ABSOLUTE, AxisMode.POSITION_RELATIVE) or self.rotary:
            return ILLEGAL_VALUE
        at = servo_map.HR_TARGET_POSITION
        target = servo_map.decode_position(self.holding[at : at + 2])
        if mode is AxisMode.POSITION_ABSOLUTE and not self.homed:
            return ILLEGAL_VALUE
        if mode is AxisMode.POSITION_RELATIVE:
            target += self.position
        inside = self.config.min_position_mm <= target <= self.config.max_position_mm
        if not inside or velocity == 0.0:
            return ILLEGAL_VALUE
        self._commanded_accel = accel
        self._begin(mode, PositionProfile(target, abs(velocity), accel, "target"))
        return None

    def _oscillate(self) -> int | None:
        """Control bit 7: start the oscillation of HR 13-21 (a homed linear axis, turning
        points inside travel and apart, a speed), from wherever the axis is."""
        at = servo_map.HR_OSC_FIRST
        block = servo_map.decode_oscillation_block(
            self.holding[at : at + servo_map.OSCILLATION_BLOCK_COUNT]
        )
        low, high = self.config.min_position_mm, self.config.max_position_mm
        valid = (
            not self.rotary
            and self.homed
            and low <= block.first_mm <= high
            and low <= block.second_mm <= high
            and abs(block.second_mm - block.first_mm) >= 1 / servo_map.POSITION_SCALE
            and block.speed > 0
        )
        if not valid:
            return ILLEGAL_VALUE
        accel = (block.acceleration or self.config.acceleration) * self._accel_k
        self._commanded_accel = accel
        speed = block.speed * self._speed_k
        self._begin(AxisMode.OSCILLATE, PositionProfile(block.first_mm, speed, accel, "oscillate"))
        self.oscillation = OscillationRun((block.first_mm, block.second_mm), accel)
        self.strokes_done = 0
        self._log.info("servo_sim.oscillating", first_mm=block.first_mm,
                       second_mm=block.second_mm, speed=block.speed, strokes=block.strokes)
        return None

    def _run_velocity(self, mode: AxisMode, velocity: float, accel: float) -> None:
        """Velocity mode and jog: a rotary axis ramps to the speed; a linear one runs toward
        the travel end in that direction, where it stops (and flags the limit)."""
        if self.rotary:
            self._begin(mode, VelocityProfile(velocity, accel, "speed"))
            return
        if velocity == 0.0:
            self._begin(mode, None)
            self._stop(accel)
            return
        end, ends = (
            (self.config.max_position_mm, "limit+")
            if velocity > 0
            else (self.config.min_position_mm, "limit-")
        )
        self._begin(mode, PositionProfile(end, abs(velocity), accel, ends))

    def _home(self) -> int | None:
        if self.rotary:
            self._begin(AxisMode.HOMING, None)
            self.homed = self.target_reached = True
            return None
        self.homed = False
        speed = self.config.setup_speed * self._speed_k
        accel = self.config.acceleration * self._accel_k
        self._begin(
            AxisMode.HOMING, PositionProfile(self.config.min_position_mm, speed, accel, "home")
        )
        return None

    def _jog(self, direction: int) -> int | None:
        at = servo_map.HR_JOG_SPEED
        speed = servo_map.decode_speed(self.holding[at : at + 2]) * self._speed_k
        if speed <= 0:
            return ILLEGAL_VALUE
        accel = self.config.acceleration * self._accel_k
        self._commanded_accel = accel
        self._run_velocity(AxisMode.JOG, direction * speed, accel)
        self.jog_direction = direction
        return None
