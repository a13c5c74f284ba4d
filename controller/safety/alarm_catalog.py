"""The line's alarm definitions, as data: one trip/process alarm per interlock, the
supervisor's own alarms, and the deviation alarms with their deadbands and delays."""

from __future__ import annotations

from controller.config.line import MFC_NAMES, LineConfig
from controller.safety.alarms import AlarmDefinition, Category, DeviationSpec, Priority
from controller.safety.interlocks import INTERLOCKS, Reaction

NOT_RUNNING = frozenset({"Idle", "Complete", "Stopped", "Aborted", "Resetting", "Clearing"})

_REACTION_CATEGORY = {
    Reaction.ESTOP: (Category.TRIP, Priority.CRITICAL),
    Reaction.TRIP_GAS: (Category.TRIP, Priority.CRITICAL),
    Reaction.TRIP: (Category.TRIP, Priority.HIGH),
    Reaction.SUSPEND: (Category.PROCESS, Priority.HIGH),
    Reaction.ALARM: (Category.DEVICE, Priority.MEDIUM),
}

SUPERVISOR_ALARMS = (
    AlarmDefinition("reignite_failed", "reignite_failed",
                    "re-ignition failed: run stays suspended until stop or retry",
                    Priority.HIGH, Category.PROCESS),
    AlarmDefinition("step_failed", "step_failed", "a recipe step could not complete",
                    Priority.HIGH, Category.TRIP),
    AlarmDefinition("internal_error", "internal_error", "unhandled controller error",
                    Priority.CRITICAL, Category.TRIP),
    AlarmDefinition("records_unavailable", "records_unavailable",
                    "run records cannot be written: run held", Priority.HIGH, Category.SYSTEM),
    # The event loop is starved: the safety cycle ran late (value: the gap in ms), or so late
    # that the run holds (max_safety_gap_s).
    AlarmDefinition("safety_cycle_late", "safety_cycle_late",
                    "the safety cycle ran late by more than one period", Priority.LOW,
                    Category.SYSTEM),
    AlarmDefinition("safety_cycle_starved", "safety_cycle_starved",
                    "the safety cycle stalled past max_safety_gap_s: run held", Priority.HIGH,
                    Category.SYSTEM),
    # Rule 12: the loop cannot land the plan inside the recipe's trims; the value is the final
    # diameter expected at the limit (the run goes on there; extra passes are the operator's).
    AlarmDefinition("growth_out_of_authority", "growth_out_of_authority",
                    "the planned diameters cannot be reached inside the recipe's trims",
                    Priority.MEDIUM, Category.PROCESS),
    AlarmDefinition("interrupted_run", "interrupted_run",
                    "a run was interrupted by a controller restart", Priority.HIGH,
                    Category.SYSTEM),
    # The envelope's own (controller/safety): an output that does not follow its correction,
    # and a hot rod that is not turning (restarting it is an operator's recorded command).
    AlarmDefinition("follow_rf", "follow_rf",
                    "RF stays on outside the safety envelope: permit dropped, then heartbeat",
                    Priority.CRITICAL, Category.TRIP),
    AlarmDefinition("follow_gas", "follow_gas",
                    "a gas flows above what the safety envelope allows: valve closed",
                    Priority.CRITICAL, Category.TRIP),
    AlarmDefinition("follow_axis", "follow_axis",
                    "an axis moves faster than the safety envelope allows: drive disabled",
                    Priority.HIGH, Category.TRIP),
    AlarmDefinition("cooling_rotation_needed", "cooling_rotation_needed",
                    "the rod is hot and not turning: restart cooling rotation (cool_rotation)",
                    Priority.HIGH, Category.PROCESS),
    # Rule 8 at the machine: our heartbeat was lost and the safety PLC gave the line to another
    # controller; this one beats no more (as after a heartbeat loss) until it is restarted.
    AlarmDefinition("line_claim_lost", "line_claim_lost",
                    "another controller took over the line at the safety PLC: this one "
                    "no longer controls it", Priority.CRITICAL, Category.TRIP),
)


def deviation_alarms(line: LineConfig) -> list[AlarmDefinition]:
    alarms = []
    for name in MFC_NAMES:
        full_scale = line.mfc(name).full_scale_slpm
        alarms.append(AlarmDefinition(
            f"{name}_deviation", f"{name}.flow", f"{line.mfc(name).gas} flow off setpoint",
            Priority.MEDIUM, Category.DEVIATION,
            deviation=DeviationSpec.percent_of_full_scale(5.0, full_scale, 5.0, 1.0),
            suppressed_in=NOT_RUNNING,
        ))
    rf = line.rf()
    alarms.append(AlarmDefinition(
        "rf_power_deviation", "rf.power", "RF forward power off setpoint", Priority.MEDIUM,
        Category.DEVIATION, deviation=DeviationSpec(deadband=0.05 * rf.max_power_kw,
                                                    delay_s=10.0),
        suppressed_in=NOT_RUNNING,
    ))
    alarms.append(AlarmDefinition(
        "coil_gap_deviation", "torch_slide.gap", "coil gap off target", Priority.LOW,
        Category.DEVIATION, deviation=DeviationSpec(deadband=2.0, delay_s=10.0, hysteresis=0.5),
        suppressed_in=NOT_RUNNING,
    ))
    # One-sided early warnings, before the interlock trips (the supervisor debounces them).
    for alarm_id, message in (
        ("water_flow_margin", "cooling water flow close to its trip"),
        ("exhaust_margin", "exhaust draft close to its trip"),
        ("reflected_power_margin", "reflected RF power close to its trip"),
    ):
        alarms.append(AlarmDefinition(alarm_id, alarm_id, message, Priority.LOW,
                                      Category.PROCESS, suppressed_in=NOT_RUNNING))
    return alarms



def alarm_definitions(line: LineConfig) -> list[AlarmDefinition]:
    definitions = []
    for interlock in INTERLOCKS:
        category, priority = _REACTION_CATEGORY[interlock.reaction]
        definitions.append(AlarmDefinition(
            interlock.id, f"interlock.{interlock.id}", interlock.description, priority, category,
        ))
    return [*definitions, *SUPERVISOR_ALARMS, *deviation_alarms(line)]
