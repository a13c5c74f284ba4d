"""Driver for the safety PLC and its I/O (Modbus TCP; map in docs/devices.md, "Safety PLC / I/O").

Outputs are never read-modified-written: a read can be stale or fail, and writing back what
was read could re-open a valve the PLC had just closed. The driver keeps the outputs image
the controller last commanded and always writes the whole word. It starts all off (the safe
state), so a restarted controller switches on only what it asks for again."""

from __future__ import annotations

import dataclasses

import structlog

from drivers.codecs import safety_io_map as io_map
from drivers.codecs.safety_io_map import SafetyInputs, SafetyOutputs
from drivers.errors import DeviceProtocolError
from drivers.transports.modbus import ModbusTransport

__all__ = ["SafetyInputs", "SafetyIo", "SafetyOutputs"]

log = structlog.get_logger(__name__)


class SafetyIo:
    def __init__(self, transport: ModbusTransport, unit: int, *, name: str = "safety_io") -> None:
        self.name = name
        self.unit = unit
        self._transport = transport
        self._outputs = SafetyOutputs()
        self._heartbeat = 0
        self._log = log.bind(device=name, unit=unit)

    @property
    def outputs(self) -> SafetyOutputs:
        """The outputs image last commanded (whether or not that write got through)."""
        return self._outputs

    # -- inputs ----------------------------------------------------------------------------
    async def read(self) -> SafetyInputs:
        """The whole input block (IR 0-12) in one request, including the outputs the PLC
        actually drives (``outputs_effective``) and its heartbeat-loss latch."""
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
        """Write the next heartbeat count: the PLC counts any change of value as a beat."""
        self._heartbeat = io_map.next_heartbeat(self._heartbeat)
        await self._transport.write_register(self.unit, io_map.HR_HEARTBEAT, self._heartbeat)

    async def reset_heartbeat_latch(self) -> None:
        """Ask the PLC to clear its latched heartbeat loss (HR 2 = 1). The PLC accepts it only
        while beats are arriving again; ``read().heartbeat_latched`` tells whether it did.
        Write the outputs word wanted after the reset first: the latch stops overriding it."""
        await self._transport.write_register(
            self.unit, io_map.HR_COMMAND, io_map.COMMAND_RESET_HEARTBEAT_LATCH
        )
        self._log.info("safety_io.heartbeat_latch_reset")
