"""Driver for the safety PLC and its I/O (Modbus TCP; map in docs/devices.md, "Safety PLC / I/O").

Outputs are never read-modified-written: a read can be stale or fail, and writing back what
was read could re-open a valve the PLC had just closed. The driver keeps the outputs image
the controller last commanded and always writes the whole word. It starts all off (the safe
state), so a restarted controller switches on only what it asks for again.

The heartbeat carries the controller's owner id (HR 3-4, one write): the PLC counts beats only
from the line's owner, so two controllers on one line cannot both keep it alive. The id is
drawn at random per driver, i.e. per controller process, unless given."""

from __future__ import annotations

import dataclasses
import secrets

import structlog

from drivers.codecs import safety_io_map as io_map
from drivers.codecs.safety_io_map import SafetyInputs, SafetyOutputs
from drivers.errors import DeviceProtocolError
from drivers.transports.modbus import ModbusTransport

__all__ = ["SafetyInputs", "SafetyIo", "SafetyOutputs", "new_owner_id"]

log = structlog.get_logger(__name__)


def new_owner_id() -> int:
    """A random non-zero 16-bit owner id: two controllers started on one line differ (a clash
    is 1 in 65535, and shows as the second one being refused, never as two owners)."""
    return secrets.randbelow(io_map.MAX_OWNER_ID) + 1


class SafetyIo:
    def __init__(
        self,
        transport: ModbusTransport,
        unit: int,
        *,
        name: str = "safety_io",
        owner_id: int | None = None,
    ) -> None:
        self.name = name
        self.unit = unit
        self.owner_id = io_map.check_owner_id(new_owner_id() if owner_id is None else owner_id)
        self._transport = transport
        self._outputs = SafetyOutputs()
        self._heartbeat = 0
        self._log = log.bind(device=name, unit=unit, owner=io_map.format_owner_id(self.owner_id))

    @property
    def outputs(self) -> SafetyOutputs:
        """The outputs image last commanded (whether or not that write got through)."""
        return self._outputs

    # -- inputs ----------------------------------------------------------------------------
    async def read(self) -> SafetyInputs:
        """The whole input block (IR 0-14) in one request, including the outputs the PLC
        actually drives (``outputs_effective``), its heartbeat-loss latch and the line's
        owner (``line_owner``; ``refused_owner``: the last id it refused)."""
        words = await self._transport.read_input(self.unit, io_map.IR_DIGITAL, io_map.INPUT_COUNT)
        try:
            return io_map.decode_inputs(words)
        except ValueError as exc:
            raise DeviceProtocolError(self.name, f"read inputs @{self.unit}", str(exc)) from exc

    async def read_outputs(self) -> SafetyOutputs:
        """What the PLC's outputs register holds now (for display and checks, never to
        build the next write from)."""
        request = f"read outputs @{self.unit}"
        (word,) = await self._transport.read_holding(self.unit, io_map.HR_OUTPUTS, 1)
        try:
            return io_map.decode_outputs(word)
        except ValueError as exc:
            raise DeviceProtocolError(self.name, request, str(exc)) from exc

    # -- outputs ---------------------------------------------------------------------------
    async def write_outputs(self, outputs: SafetyOutputs, *, urgent: bool = False) -> None:
        """Write the whole outputs word. ``urgent`` puts the write ahead of every request
        queued on the bus (the one in flight finishes first): for the safety reaction."""
        # The image is the controller's intent: recorded before the write, so that after a
        # failed write the next one re-asserts it rather than an older state.
        self._outputs = outputs
        await self._transport.write_register(
            self.unit, io_map.HR_OUTPUTS, io_map.encode_outputs(outputs), urgent=urgent
        )
        self._log.debug("safety_io.outputs", **dataclasses.asdict(outputs))

    async def set_output(self, name: str, on: bool) -> None:
        if name not in io_map.OUTPUT_NAMES:
            known = ", ".join(sorted(io_map.OUTPUT_NAMES))
            raise ValueError(f"{self.name}: unknown output {name!r}; known: {known}")
        await self.write_outputs(dataclasses.replace(self._outputs, **{name: on}))

    async def heartbeat(self) -> None:
        """Write our owner id and the next count in one request (FC 16, HR 3-4). The PLC
        counts it as a beat only from the line's owner; a beat on a free line, or on one
        whose owner's heartbeat is lost, claims it (``read().line_owner`` tells)."""
        self._heartbeat = io_map.next_heartbeat(self._heartbeat)
        await self._transport.write_registers(
            self.unit, io_map.HR_BEAT_OWNER, io_map.encode_beat(self.owner_id, self._heartbeat)
        )

    async def beat_and_read(self) -> SafetyInputs:
        """The heartbeat and the input block in one exchange (FC 23: the beat written to
        HR 3-4, then the inputs' read-only copy at HR 16-30 read back), as the safety cycle
        sends them: half the exchanges of ``heartbeat()`` and ``read()`` apart."""
        self._heartbeat = io_map.next_heartbeat(self._heartbeat)
        words = await self._transport.write_read(
            self.unit, io_map.HR_BEAT_OWNER, io_map.encode_beat(self.owner_id, self._heartbeat),
            io_map.HR_INPUTS_COPY, io_map.INPUT_COUNT)
        try:
            return io_map.decode_inputs(words)
        except ValueError as exc:
            raise DeviceProtocolError(self.name, f"beat and read inputs @{self.unit}",
                                      str(exc)) from exc

    async def reset_heartbeat_latch(self) -> None:
        """Ask the PLC to clear its latched heartbeat loss (HR 2 = 1). The PLC accepts it only
        while beats are arriving again; ``read().heartbeat_latched`` tells whether it did.
        Write the outputs word wanted after the reset first: the latch stops overriding it."""
        await self._transport.write_register(
            self.unit, io_map.HR_COMMAND, io_map.COMMAND_RESET_HEARTBEAT_LATCH
        )
        self._log.info("safety_io.heartbeat_latch_reset")
