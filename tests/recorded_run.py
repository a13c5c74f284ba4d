"""A run's records as the controller writes them, made without the line: a header with the
serial and lots, state changes, commands, a first-out alarm, two layers of passes (schema 2's
figures) and telemetry samples of the real shape (``Telemetry.to_json``). For the tests of
the run report (CSV, HTML, routes, CLI) that need records but not a whole run."""

from __future__ import annotations

from pathlib import Path

from controller.machine.telemetry import Telemetry
from controller.records.run_records import Outcome, PassRecord, RunHeader, RunRecords
from controller.safety.alarms import AlarmEvent, AlarmState, Category, Priority
from drivers.diameter_gauge import GaugeReading
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.servo_axis import AxisMode, AxisStatus

START = 1_700_000_000.0
SAMPLES = 40
SERIAL = "PF-0042"
# A recipe name and text that would end a <script> element if not escaped.
RECIPE_NAME = "clad </script><!-- x"
RECIPE_TEXT = "name: clad\n# </script><script>alert(1)</script>\nlayers: []\n"
MFCS = ("mfc_ar", "mfc_o2", "mfc_n2", "mfc_sicl4", "mfc_dopant")


class Clock:
    """The records' wall clock, set by the test."""

    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


def header() -> RunHeader:
    return RunHeader(recipe_name=RECIPE_NAME, recipe_text=RECIPE_TEXT, line="line-sim",
                     machine="lathe-1", operator="olga", preform_serial=SERIAL,
                     bait_rod_lot="BR-7", precursor_lot="SC-3")


def a_pass(number: int, layer: int, layer_pass: int, diameter: float) -> PassRecord:
    return PassRecord(
        layer=layer, pass_index=number, diameter_mm=diameter, deposited_g=1.5,
        duration_s=120.0, started_at=START + number * 120, ended_at=START + number * 120 + 120,
        step=3, layer_name=("base", "doped")[layer], layer_pass=layer_pass, planned_passes=3,
        extra_passes=0, diameter_source="gauge", planned_boundary_mm=(31.0, 32.0)[layer],
        planned_inner_mm=(30.0, 31.0)[layer], start_diameter_mm=30.0, sicl4_g_min=20.0,
        sicl4_scale=1.0, dopant_slpm=(0.0, 0.5)[layer], planned_dopant_slpm=(0.0, 0.5)[layer],
        traverse_mm_min=150.0, planned_traverse_mm_min=150.0, efficiency=0.5,
        wanted_factor=1.0, limited=layer_pass == 3, composition_error_pct=None)


PASSES = [a_pass(1, 0, 1, 30.34), a_pass(2, 0, 2, 30.67), a_pass(3, 0, 3, 31.01),
          a_pass(4, 1, 1, 31.33), a_pass(5, 1, 2, 31.67), a_pass(6, 1, 3, 31.98)]

TRIP = AlarmEvent(alarm_id="TRIP-WATER", tag="safety.water_flow_low",
                  from_state=AlarmState.NORMAL, to_state=AlarmState.UNACK_ACTIVE,
                  priority=Priority.CRITICAL, category=Category.TRIP,
                  message="Cooling water low", time=START + 900, action="activate",
                  value=14.2, first_out=True)


def sample(i: int) -> dict[str, object]:
    """The i-th sample: the plasma at 50 kW, the gases flowing, the carriage reversing every
    ten samples, the diameter growing; the gauge has no reading in the first sample."""
    t = Telemetry()
    t.rf = RfStatus(forward_kw=50.0 + i * 0.1, reflected_kw=1.0, setpoint_kw=50.0, ready=True,
                    rf_on=True, plasma_lit=True, interlock_open=False, fault=False,
                    fault_code=0, ramping=False)
    for n, name in enumerate(MFCS):
        flow = (30.0, 80.0, 30.0, 2.9, 0.5)[n]
        t.mfcs[name] = MfcReading(14.7, 25.0, flow, flow, flow, name, frozenset({"MOV"}))
    for name, velocity in (("spindle", 30.0), ("carriage", 150.0 if i // 10 % 2 else -150.0)):
        t.axes[name] = AxisStatus(enabled=True, moving=True, in_position=False, homed=True,
                                  limit_positive=False, limit_negative=False, alarm=False,
                                  alarm_code=0, position_mm=float(i), velocity=velocity,
                                  mode=AxisMode.VELOCITY)
    t.gauge = None if i == 0 else GaugeReading(diameter_mm=30.0 + i * 0.05, valid=True)
    return {**t.to_json(), "state": "Execute"}


async def record_run(db: Path) -> int:
    """Records the run (aborted by a cooling-water trip after its passes); returns its id."""
    clock = Clock()
    async with RunRecords(db, line="line-sim", clock=clock) as rec:
        run_id = await rec.start_run(header())
        await rec.record_command(run_id, "olga", "start", {"recipe": "clad"}, accepted=True)
        for to_state in ("Starting", "Execute"):
            clock.t += 10
            await rec.record_state(run_id, "Idle" if to_state == "Starting" else "Starting",
                                   to_state, "operator start")
        for i in range(SAMPLES):
            rec.add_telemetry(run_id, sample(i), t=START + 20 + i * 20)
        for record in PASSES:
            await rec.record_pass(run_id, record)
        clock.t = START + 900
        await rec.record_alarm(run_id, TRIP)
        await rec.record_state(run_id, "Execute", "Aborting", "trip: TRIP-WATER")
        await rec.record_command(run_id, "olga", "unhold", {}, accepted=False,
                                 reason="unhold is not allowed in Aborting")
        clock.t += 30
        await rec.record_state(run_id, "Aborting", "Aborted", None)
        await rec.end_run(run_id, Outcome.ABORTED)
        await rec.flush()
    return run_id
