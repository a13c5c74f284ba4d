"""The command gate: the role check and the audit trail, in one place for every channel (HTTP,
MQTT, the HMI, any later one). ``LineService`` runs each command through it; a channel only
maps the reply to its own terms (an HTTP status code, an MQTT reply).

- A name that is not a command of the service is refused (``refused_by="unknown"``), audited.
- A user whose role may not do the command is refused (``refused_by="role"``), audited.
- Every other command is carried out, then audited as accepted, refused or failed, except the
  renewals of a jog or move lease (the same command from the same user within the window),
  which would flood the trail: the start of the motion is audited, not each renewal."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controller.records.audit import AuditError, AuditTrail, Outcome, canonical
from controller.run.commands import ACT_FIRST_COMMANDS
from controller.service.protocol import CommandReply
from controller.service.roles import SERVICE_COMMANDS, Role, refusal

MAX_NAME = 64  # an unknown command's name is audited, cut to this
LEASED = frozenset({"jog", "move"})

RoleOf = Callable[[str], Role | None]


@dataclass
class _Lease:
    args: str
    at: float


class LeaseRenewals:
    """Tells a lease's renewal (same user, command and arguments within the window) from a
    new command."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._last: dict[tuple[str, str], _Lease] = {}

    def is_renewal(self, user: str, command: str, args: dict[str, Any], accepted: bool) -> bool:
        now = self.clock()
        last = self._last.pop((user, command), None)
        if command not in LEASED or not accepted:
            return False
        key = canonical({k: v for k, v in args.items() if k != "session"})
        self._last[(user, command)] = _Lease(key, now)
        return last is not None and last.args == key and now - last.at <= self.window_s


class CommandGate:
    def __init__(self, audit: AuditTrail | None, role_of: RoleOf | None, *,
                 renewal_window_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 audit_timeout_s: float | None = None) -> None:
        """``role_of`` None: a local controller without user management (`povd run`, tests):
        no role check; ``audit`` None: no audit trail. ``audit_timeout_s``: an entry not
        written in this long counts as the trail unavailable (a stalled disk)."""
        self.audit = audit
        self.audit_timeout_s = audit_timeout_s
        self.role_of = role_of
        self.renewals = LeaseRenewals(renewal_window_s, clock)

    def refusal(self, user: str, command: str) -> CommandReply | None:
        """The reply for a command the gate itself refuses (unknown, or not the user's role)."""
        if command not in SERVICE_COMMANDS:
            return CommandReply(command, False, f"{command!r} is not a command of the service",
                                refused_by="unknown")
        if self.role_of is None:
            return None
        role = self.role_of(user)
        if role is None:
            return CommandReply(command, False, f"unknown user {user!r}", refused_by="role")
        why = refusal(role, command)
        return None if why is None else CommandReply(command, False, why, refused_by="role")

    async def run(self, user: str, command: str, args: dict[str, Any],
                  act: Callable[[], Awaitable[CommandReply]],
                  on_refused: Callable[[CommandReply], Awaitable[None]] | None = None,
                  ) -> CommandReply:
        """Check, carry out with ``act``, audit; a refusal by the gate goes to ``on_refused``
        too (the run records keep it)."""
        refused = self.refusal(user, command)
        if refused is not None:
            self.renewals.is_renewal(user, command, args, accepted=False)
            if on_refused is not None:
                await on_refused(refused)
            await self._audit(user, command, args, "refused", refused.reason)
            return refused
        try:
            reply = await act()
        except Exception as exc:
            self.renewals.is_renewal(user, command, args, accepted=False)
            await self._audit(user, command, args, "failed", f"{type(exc).__name__}: {exc}")
            raise
        if not self.renewals.is_renewal(user, command, args, reply.accepted):
            try:
                await self._audit(user, command, args,
                                  "accepted" if reply.accepted else "refused", reply.reason)
            except AuditError:
                # Stop, abort and a jog's stop have acted before they are audited (rule 9): a
                # stalled trail delays only their "durable", never their answer.
                if command not in ACT_FIRST_COMMANDS:
                    raise
                return dataclasses.replace(reply, data={**reply.data, "audit": "pending"})
        return reply

    async def _audit(self, user: str, command: str, args: dict[str, Any], outcome: Outcome,
                     reason: str | None) -> None:
        if self.audit is None:
            return
        shown = {k: v for k, v in args.items() if k != "session"}
        entry = asyncio.ensure_future(self.audit.append_async(
            user, command[:MAX_NAME], {"args": shown}, outcome, reason))
        # Shielded: a late entry still lands (the thread cannot be stopped), in its turn.
        done, _ = await asyncio.wait({entry}, timeout=self.audit_timeout_s)
        if not done:
            entry.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise AuditError(self.audit.path,
                             f"no answer in {self.audit_timeout_s:g} s (storage stalled)")
        entry.result()
