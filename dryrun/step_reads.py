"""The readings that end a step, held in the dry run to a period of process time.

A time-scaled run polls each device at its configured rate per (virtual) wall second, and the
executor re-reads the telemetry while it waits every ``POLL_S`` of wall time: at x400 an RF
reading is 20 process seconds from the next, an MFC's 40, the executor's look 8. The glass
does not see it (the devices hold their setpoints between polls, the carriage reverses in its
drive, the growth loop corrects per pass). A step that ends on a reading does: the ignition
sets 30 slpm of argon, waits until the argon MFC reads settled, turns the RF on and waits for
a reading that shows the plasma lit; argon flows all the while. Measured at x400 before this
module: ignition 56 process seconds from the argon's setpoint to the ramp's first (48 of them
waiting for the argon reading), 4.5 at x10, the run's Ar +47 % over x10's.

So in the dry run, and only there, the devices whose readings end a step are polled every
``READ_PERIOD_PROCESS_S`` of process time whatever the scale (and the executor's waits look at
their telemetry at least that often in any scaled run: ``controller/run/executor.py``,
``WAIT_PROCESS_S``). Why that leaves the outcome alone: the other devices keep the line's rates
(the glass is made between polls as before); a step now ends within a period of process time of
its condition, as in a slow scaled run, instead of within a period of wall time times the
scale. The period is the simulated line's tick at x400 (2 ms of virtual time, 0.8 process s):
no reading is fresher than the last tick, so a shorter period reads the same image again (0.5 s
was measured: 0.05 sl less argon for 25 % more polls). The cost is CPU (about 61,000 more polls
over the 100-pass run: 28 -> 46 s; docs/benchmarks.md). The line file keeps its rates: the dry
run's are derived here from it."""

from __future__ import annotations

from controller.config.line import LineConfig
from controller.run.executor import WAIT_PROCESS_S

# The devices whose readings end a step (controller/run/executor.py): the argon MFC ends the
# ignition's wait for its flow to settle; the RF generator ends the waits for the plasma to
# light (its plasma-lit bit; the safety PLC's optical input, read at 100 Hz, is 4 process s
# apart at x400) and for the power to reach a setpoint. Not here: the other MFCs (nothing
# waits on them; the deposition reads the precursors' flows for its growth model, at the
# line's rate as in every run) and the drives (the carriage's arrivals end moves while only
# O2 and N2 flow, whose totals are within their bar).
STEP_GATES = ("mfc_ar", "rf")

# The simulated line's tick at x400 (simulators/line.py: MIN_TICK_S, 2 ms x 400), and the
# period at which the executor's waits look at these readings in any scaled run.
READ_PERIOD_PROCESS_S = WAIT_PROCESS_S


def reading_rates(line: LineConfig, time_scale: float) -> LineConfig:
    """The line with each step-ending device polled at least every READ_PERIOD_PROCESS_S of
    process time (never slower than its own rate). Not validated again on purpose: the bus
    budget holds a serial bus's poll plan to its baud rate, and the dry run's buses are not
    paced (simulators/line.py, PACED_UP_TO_SCALE), so the faster reads cost CPU, not wire."""
    hz = time_scale / READ_PERIOD_PROCESS_S
    devices = {name: (device.model_copy(update={"poll_hz": max(device.poll_hz, hz)})
                      if name in STEP_GATES else device)
               for name, device in line.devices.items()}
    return line.model_copy(update={"devices": devices})
