"""The device pollers and the link health they keep.

One loop per device at its configured rate stores each reading in the telemetry snapshot and
counts its failures. The safety I/O loop also sends the heartbeat and has the interlocks judged
after every read, so the fastest poll is also the interlock cycle.

The heartbeat carries the controller's owner id, and the safety PLC counts beats only from the
line's owner (docs/devices.md): ``claim_line`` makes the first beats and confirms the claim
before any poller runs (one controller per line, domain.md rule 8, at the machine itself); the
safety loop watches the owner and stops beating for good once another controller holds it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from controller.config.line import DEVICE_NAMES, LineConfig
from controller.machine.devices import Machine
from controller.machine.telemetry import LinkHealth, Telemetry
from drivers.codecs.safety_io_map import NO_OWNER, SafetyInputs, format_owner_id
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

Spawn = Callable[..., asyncio.Task[None]]
# After the first answer that names another owner, the claim keeps trying this many heartbeat
# timeouts: a dead owner's heartbeat is lost within one, and then the PLC hands the line over.
CLAIM_HANDOVER_TIMEOUTS = 2.0


class LineClaimRefused(Exception):
    """The line could not be claimed at its safety PLC; nothing was written but the beats."""

    def __init__(self, line: str, owner: int | None, detail: str | None = None) -> None:
        if owner is None:
            message = f"{line} cannot be claimed at its safety I/O: {detail}"
        elif owner == NO_OWNER:
            message = f"{line} cannot be claimed: the safety PLC did not take our beats"
        else:
            message = (f"{line} is controlled by another controller (owner "
                       f"{format_owner_id(owner)}); stop it first")
        super().__init__(message)
        self.line = line
        self.owner = owner


def poll_hz(line: LineConfig, device: str) -> float:
    return line.devices[device].poll_hz


def link_alive(telemetry: Telemetry, device: str) -> bool:
    health = telemetry.health.get(device)
    return health is not None and health.ok


def link_lost(telemetry: Telemetry, device: str) -> bool:
    """A link that answered once and has since gone quiet (not one still coming up)."""
    health = telemetry.health.get(device)
    return health is not None and health.ever_ok and not link_alive(telemetry, device)


async def wait_links(telemetry: Telemetry, timeout_s: float) -> list[str]:
    """Wait until every device has answered; returns those that never did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        missing = [d for d in DEVICE_NAMES if not link_alive(telemetry, d)]
        if not missing:
            return []
        await asyncio.sleep(0.05)
    return [d for d in DEVICE_NAMES if not link_alive(telemetry, d)]


def _failed(health: LinkHealth, exc: DeviceError) -> None:
    health.failures += 1
    health.consecutive_failures += 1
    health.last_error = str(exc)


def _answered(health: LinkHealth) -> None:
    health.ever_ok = True
    health.consecutive_failures = 0
    health.last_ok_wall = time.monotonic()


class Pollers:
    """Owns nothing but the loops' bodies: the supervisor spawns them in its TaskGroup, and
    stops them by setting ``stopping`` before cancelling."""

    def __init__(
        self,
        machine: Machine,
        telemetry: Telemetry,
        *,
        heartbeat_enabled: Callable[[], bool],
        judge: Callable[[], None],
        configure_axis: Callable[[str], Awaitable[None]] | None = None,
        on_claim_lost: Callable[[int], None] | None = None,
    ) -> None:
        self.machine = machine
        self.line = machine.line
        self.telemetry = telemetry
        self.stopping = False
        self._heartbeat_enabled = heartbeat_enabled
        self._judge = judge
        self._configure_axis = configure_axis
        self._on_claim_lost = on_claim_lost
        self.late_cycles = 0
        self.beats = 0
        self.claim_lost_to: int | None = None  # the owner that took the line from us
        self._refused_seen: int | None = None
        self._log = log.bind(line=self.line.line,
                             owner=format_owner_id(machine.safety_io.owner_id))

    # -- the line claim --------------------------------------------------------------------
    async def claim_line(self, link_wait_s: float) -> None:
        """Beat until the safety PLC names us the line's owner; LineClaimRefused when another
        controller keeps it (still beating after ``CLAIM_HANDOVER_TIMEOUTS`` heartbeat
        timeouts) or the safety I/O does not answer within ``link_wait_s``. Call it before
        ``spawn``: until the claim holds, nothing may be written to the line."""
        io = self.machine.safety_io
        period = 1.0 / poll_hz(self.line, "safety_io")
        handover_s = CLAIM_HANDOVER_TIMEOUTS * self.line.safety_io().heartbeat_timeout_s
        link_deadline = time.monotonic() + link_wait_s
        refuse_at: float | None = None
        while True:
            try:
                await self.machine.safety_io.heartbeat()
                inputs = await io.read()
            except DeviceError as exc:
                if time.monotonic() > link_deadline:
                    raise LineClaimRefused(self.line.line, None, str(exc)) from exc
            else:
                if inputs.line_owner == io.owner_id:
                    self._refused_seen = inputs.refused_owner
                    self._log.info("line.claimed")
                    return
                refuse_at = refuse_at or time.monotonic() + handover_s
                if time.monotonic() > refuse_at:
                    self._log.error("line.claim_refused",
                                    holder=format_owner_id(inputs.line_owner))
                    raise LineClaimRefused(self.line.line, inputs.line_owner)
            await asyncio.sleep(period)

    def _watch_claim(self, inputs: SafetyInputs) -> None:
        """After every safety read: another owner on the line means ours was lost (our
        heartbeat stopped long enough for the PLC to hand the line over); a refused id means
        another controller is trying to take it."""
        if inputs.refused_owner != self._refused_seen:
            if self._refused_seen is not None:
                self._log.warning("line.claim_contested",
                                  refused=format_owner_id(inputs.refused_owner))
            self._refused_seen = inputs.refused_owner
        owner = inputs.line_owner
        if self.claim_lost_to is None and owner not in (NO_OWNER, self.machine.safety_io.owner_id):
            self.claim_lost_to = owner
            self._log.error("line.claim_lost", holder=format_owner_id(owner))
            if self._on_claim_lost is not None:
                self._on_claim_lost(owner)

    def spawn(self, spawn: Spawn) -> list[asyncio.Task[None]]:
        """Start every poller, safety I/O first (the order the tasks are first scheduled in)."""
        machine = self.machine
        tasks = [spawn(self.poll_safety(), name="poll-safety_io"),
                 spawn(self.poll("rf", machine.rf.read, self._store_rf), name="poll-rf")]
        for name, mfc in machine.mfcs.items():
            tasks.append(spawn(self.poll(name, mfc.read, self._store_mfc(name)),
                               name=f"poll-{name}"))
        for name, axis in machine.axes.items():
            tasks.append(spawn(self.poll(name, axis.read, self._store_axis(name),
                                         on_link_up=self._axis_link_up(name)),
                               name=f"poll-{name}"))
        tasks.append(spawn(self.poll("diameter_gauge", machine.gauge.read, self._store_gauge),
                           name="poll-gauge"))
        return tasks

    async def poll(
        self,
        device: str,
        read: Callable[[], Awaitable[Any]],
        store: Callable[[Any], None],
        on_link_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        health = self.telemetry.link(device)
        configured = False

        async def cycle() -> None:
            nonlocal configured
            health.polls += 1
            try:
                store(await read())
                if on_link_up is not None and not configured:
                    await on_link_up()
                    configured = True
            except DeviceError as exc:
                _failed(health, exc)
                configured = configured and health.ok
            else:
                _answered(health)

        await self._every(device, cycle)

    def _axis_link_up(self, axis: str) -> Callable[[], Awaitable[None]] | None:
        configure = self._configure_axis
        if configure is None:
            return None

        async def up() -> None:
            await configure(axis)
        return up

    async def poll_safety(self) -> None:
        """The safety cycle: read the safety I/O, judge, compute the envelope and reconcile
        (``judge`` does all three without awaiting a device). A cycle that completed within
        its period has earned a beat: the beat proves that the controller watches, not merely
        that a poller runs (rule 4). It goes with the next cycle's read, one exchange (FC 23:
        the beat written, then the inputs read), so the PLC counts it one period later than a
        write of its own would reach it (its timeout is a second) and a trip's writes, launched
        by the judgement, never queue behind it. Once the line belongs to another controller
        no beat goes out again: the line is claimed only at start."""
        device = "safety_io"
        health = self.telemetry.link(device)
        period = 1.0 / poll_hz(self.line, device)
        beat_earned = False

        async def cycle() -> None:
            nonlocal beat_earned
            started = time.monotonic()
            health.polls += 1
            beat = beat_earned and self._heartbeat_enabled() and self.claim_lost_to is None
            beat_earned = False
            try:
                if beat:
                    inputs = await self.machine.safety_io.beat_and_read()
                    self.beats += 1
                else:
                    inputs = await self.machine.safety_io.read()
            except DeviceError as exc:
                _failed(health, exc)
            else:
                self.telemetry.safety = inputs
                _answered(health)
                self._watch_claim(inputs)
            try:
                self._judge()
            except Exception:
                # A cycle that did not complete proves nothing: no beat (the PLC acts alone).
                log.exception("safety_cycle.failed")
                return
            if time.monotonic() - started > period:
                self.late_cycles += 1
                return
            beat_earned = True

        await self._every(device, cycle)

    async def _every(self, device: str, cycle: Callable[[], Coroutine[Any, Any, None]]) -> None:
        period = 1.0 / poll_hz(self.line, device)
        next_at = time.monotonic()
        while not self.stopping:
            await cycle()
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # overran (a timeout): do not try to catch up in a burst
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    def _store_rf(self, sample: Any) -> None:
        self.telemetry.rf = sample

    def _store_mfc(self, name: str) -> Callable[[Any], None]:
        def store(sample: Any) -> None:
            self.telemetry.mfcs[name] = sample
        return store

    def _store_axis(self, name: str) -> Callable[[Any], None]:
        def store(sample: Any) -> None:
            self.telemetry.axes[name] = sample
        return store

    def _store_gauge(self, sample: Any) -> None:
        self.telemetry.gauge = sample
