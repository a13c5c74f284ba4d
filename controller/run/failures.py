"""Which reaction a failure under the executor leads to: a failed ignition suspends (or
aborts), a failed step or an unhandled error aborts, a write the envelope refused aborts unless
a reaction is already on it, lost records hold, and a device error reacts as the link
interlock of that device (or bus) would, a moment before the poller declares the link lost."""

from __future__ import annotations

import asyncio
import time

import structlog

from controller.config.line import AXIS_NAMES, PLASMA_GASES, PRECURSORS, LineConfig
from controller.machine.polling import poll_hz
from controller.records.schema import RecordsUnavailable
from controller.run.executor import IgnitionFailed, StepFailed
from controller.run.reactions import ReactingLine, Reactions
from controller.safety.interlocks import INTERLOCKS_BY_ID, Interlock, Reaction, evaluate
from controller.safety.judgement import Judge
from controller.safety.states import State
from controller.safety.writer import EnvelopeRefused
from drivers.errors import DeviceError, DeviceExceptionResponse

log = structlog.get_logger(__name__)


def interlock_for_device_error(line: LineConfig, exc: DeviceError) -> Interlock | None:
    """The link interlock of the device (or bus) that failed under the executor."""
    names = {exc.device} | {n for n, d in line.devices.items() if d.bus == exc.device}
    if names & set(AXIS_NAMES):
        return INTERLOCKS_BY_ID["link_drives"]
    if "rf" in names:
        return INTERLOCKS_BY_ID["link_rf"]
    if "safety_io" in names:
        return INTERLOCKS_BY_ID["link_safety_io"]
    if names & set(PRECURSORS):
        return INTERLOCKS_BY_ID["link_precursor"]
    if names & set(PLASMA_GASES):
        return INTERLOCKS_BY_ID["link_plasma_gas"]
    return None


class Failures:
    def __init__(self, sup: ReactingLine, reactions: Reactions, judge: Judge) -> None:
        self._sup = sup
        self._reactions = reactions
        self._judge = judge
        self._log = log.bind(line=sup.line.line)

    async def react(self, exc: Exception) -> None:
        """The reaction a failure under the executor leads to."""
        reactions = self._reactions
        if isinstance(exc, IgnitionFailed):
            await reactions.ignition_failed(exc)
        elif isinstance(exc, StepFailed):
            await reactions.abort_with("step_failed", str(exc))
        elif isinstance(exc, EnvelopeRefused):
            # The envelope forbade a step's write: a condition the judge is reacting to, or
            # one it is not (then the run cannot go on as planned).
            if not reactions.busy:
                await reactions.abort_with("step_failed",
                                           f"refused by the safety envelope: {exc}")
        elif isinstance(exc, RecordsUnavailable):
            await reactions.records_failed(exc)
        elif isinstance(exc, DeviceError):
            await self.device_failed(exc)
        else:  # rule 1: an unhandled error ends in the safe state
            self._log.error("executor.crashed", exc_info=exc)
            await reactions.abort_with("internal_error", repr(exc))

    async def device_failed(self, exc: DeviceError) -> None:
        """A write under the executor failed before the poller declared the link lost: react
        as the link interlock would, a moment earlier."""
        self._log.error("executor.device_error", device=exc.device, error=str(exc))
        if isinstance(exc, DeviceExceptionResponse):
            await self._device_refused(exc)
            return
        interlock = interlock_for_device_error(self._sup.line, exc)
        if interlock is None:
            await self._reactions.abort_with("internal_error", f"device error in recipe: {exc}")
            return
        self._sup.alarms.evaluate(f"interlock.{interlock.id}", True, time.time())
        self._judge.mark_tripped(interlock.id)
        if interlock.reaction is Reaction.SUSPEND and self._sup.sm.state is State.EXECUTE:
            await self._reactions.suspend(interlock)
            return
        await self._reactions.trip_now(interlock)

    async def _device_refused(self, exc: DeviceExceptionResponse) -> None:
        """The device answered and refused: not a lost link. Its status says why (a drive
        alarm, an RF fault); give the pollers a moment to bring that status in."""
        line = self._sup.line
        await asyncio.sleep(3 / min(poll_hz(line, "rf"), poll_hz(line, "carriage")))
        tripped = [i for i in evaluate(self._sup.signals(), line)
                   if i.reaction is not Reaction.ALARM]
        if tripped:
            await self._reactions.trip_now(tripped[0])
        else:
            await self._reactions.abort_with("step_failed", f"device refused a command: {exc}")
