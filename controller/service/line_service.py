"""The running controller as a service: the ``ControllerService`` the HTTP API and the MQTT
bridge call. Every command passes its gate (``service.gate``: the role check and the audit
trail, once for every channel), is turned into a supervisor action, and is recorded durably,
refusals included, before it answers (architecture: the command path)."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from controller.recipes.parse_worker import parse_recipe_off_loop
from controller.recipes.planning import plan_from_recipe
from controller.recipes.recipe import Recipe, RecipeError
from controller.records.audit import AuditTrail
from controller.records.resume_check import resume_refusal
from controller.records.run_records import RecordsReader, RecordsUnavailable, RunHeader
from controller.run.commands import (
    ACT_FIRST_COMMANDS,
    RECORD_PENDING,
    SAFE_WARD_COMMANDS,
    CoolingRotationRefused,
)
from controller.run.executor import Cursor
from controller.run.maintenance import MaintenanceRefused
from controller.run.rest_keeper import PurgeRefused
from controller.run.supervisor import Supervisor
from controller.safety.alarms import AlarmError
from controller.safety.states import CommandRefused, Mode, State
from controller.safety.writer import EnvelopeRefused
from controller.service.gate import CommandGate
from controller.service.protocol import CommandReply, Event
from controller.service.roles import Role
from controller.service.users import UserStore
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

RUN_COMMANDS = ("hold", "unhold", "stop", "abort", "reset", "clear")


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RecordedRefusal(Refused):
    """A refusal the supervisor has already recorded (a start it refused itself)."""


class NotRecorded(Refused):
    """A command carried out whose record did not reach the disk in time: never acknowledged
    (rule 9). What it changed stays in effect; the records' alarm stands and a run holds."""

    def __init__(self, command: str, detail: str) -> None:
        super().__init__(f"{command} was carried out but could not be recorded ({detail}); "
                         "run records unavailable: only hold, stop, abort and jog_stop are "
                         "accepted until they recover")


def _whole(args: dict[str, Any], name: str) -> int | None:
    """A whole-number argument (None if absent); Refused for anything else (2.5, "3", true)."""
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f"{name} must be a whole number, not {value!r}")
    return value


class LineService:
    """``ControllerService`` over a live supervisor."""

    def __init__(self, sup: Supervisor, users: UserStore | None, records_db: Path,
                 audit: AuditTrail | None = None, *, renewal_window_s: float = 1.0) -> None:
        self.sup = sup
        self.users = users
        self.records_db = records_db
        self.line = sup.line.line
        self.machine = sup.line.machine
        self._lock = asyncio.Lock()  # one command at a time: the unit has one state
        role_of = None if users is None else self._role_of
        self.gate = CommandGate(audit, role_of, renewal_window_s=renewal_window_s,
                                audit_timeout_s=sup.line.supervision.records_timeout_s)
        self._handlers: dict[str, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "start": self._start,
            "retry": self._retry,
            "ack": self._ack,
            "shelve": self._shelve,
            "mode": self._mode,
            "trim": self._trim,
            "add_passes": self._add_passes,
            "jog": self._jog,
            "jog_stop": self._jog_stop,
            "home": self._home,
            "move": self._move,
            "device_test": self._device_test,
            "cool_rotation": self._cool_rotation,
            "purge": self._purge,
        }
        # Runs left interrupted by a dead controller: known at start-up, and changed only by a
        # resume or an abandon here, so status() never goes to the disk for them.
        self._interrupted_runs = self._read_interrupted()

    # -- reads -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = self.sup.status()
        layer = self.sup.commands.layer_passes()
        status.update(line=self.line, machine=self.machine,
                      layer=None if layer is None else layer.to_json(),
                      interrupted_runs=[r.id for r in self._interrupted_runs],
                      links={d: self.sup.link_alive(d) for d in self.sup.line.devices},
                      # The envelope's conditions now (interlocks by level, a latched PLC
                      # heartbeat) and what would refuse a jog: a screen shows both before
                      # anyone tries, not only once a latched alarm or a refusal says so.
                      conditions=sorted(self.sup.envelope_inputs().conditions),
                      maintenance_refusal=self.sup.maintenance.refusal("jog"))
        return status

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        return self.sup.fanout.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.sup.fanout.unsubscribe(queue)

    def events_since(self, seq: int, limit: int = 1000) -> list[Event]:
        try:
            records = RecordsReader(self.records_db).events_since(seq, line=self.line,
                                                                  limit=limit)
        except RecordsUnavailable:
            return []
        return [Event(seq=r.seq, kind=r.kind, t=r.t, payload=r.payload) for r in records]

    def last_event_seq(self) -> int:
        try:
            return RecordsReader(self.records_db).last_seq(self.line)
        except RecordsUnavailable:
            return 0

    def _read_interrupted(self) -> list[Any]:
        try:
            runs = RecordsReader(self.records_db).interrupted_runs()
        except RecordsUnavailable:
            return []
        return [r for r in runs if r.line == self.line and r.id != self.sup.run_id]

    # -- commands --------------------------------------------------------------------------
    async def execute(self, user: str, command: str, args: dict[str, Any],
                      session: str | None = None) -> CommandReply:
        """``session`` names the client session (an HTTP token, an MQTT requester): a jog
        lease belongs to the session that took it (rule 6)."""
        args = dict(args)
        if command in ("jog", "move"):
            args["session"] = session or f"user:{user}"

        async def refused(reply: CommandReply) -> None:
            await self._record(user, command, args, False, reply.reason)

        async def act() -> CommandReply:
            if command in ACT_FIRST_COMMANDS:
                # Stop, abort and a jog's stop never queue behind another command (one held up
                # by a stalled disk, say): they cut into whatever runs, like a trip (rule 9).
                return await self._execute(user, command, args)
            async with self._lock:
                return await self._execute(user, command, args)

        reply = await self.gate.run(user, command, args, act, on_refused=refused)
        if reply.state is None:
            reply = dataclasses.replace(reply, state=self.sup.sm.state.value)
        return reply

    async def _execute(self, user: str, command: str, args: dict[str, Any]) -> CommandReply:
        if not self.sup.records_ok and command not in SAFE_WARD_COMMANDS:
            # Rule 9: nothing is done that cannot be recorded; hold, stop, abort still go.
            log.error("command.refused_no_records", user=user, command=command)
            return self._reply(command, False, "run records unavailable: only hold, stop, "
                               "abort and jog_stop are accepted")
        if command in RUN_COMMANDS:
            result = await self.sup.command(command, user, reason=args.get("reason"))
            data = {"record": "pending"} if result.record_pending else None
            return self._reply(command, result.accepted, result.reason, data)
        handler = self._handlers.get(command)
        if handler is None:
            reason = f"{command!r} is not a command of this controller"
            await self._record(user, command, args, False, reason)
            return self._reply(command, False, reason)
        try:
            data = await handler(user, args)
        except (Refused, MaintenanceRefused, CommandRefused, AlarmError, EnvelopeRefused,
                CoolingRotationRefused, PurgeRefused) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            if not isinstance(exc, RecordedRefusal | NotRecorded):
                await self._record(user, command, args, False, reason)
            return self._reply(command, False, reason)
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"bad arguments for {command}: {exc}"
            await self._record(user, command, args, False, reason)
            return self._reply(command, False, reason)
        except DeviceError as exc:
            # A device refused or did not answer (a drive alarm, a lost link): the command
            # failed, and the operator is told which device and why, not an internal error.
            reason = f"device error: {exc}"
            log.warning("service.device_error", command=command, user=user, error=str(exc))
            await self._record(user, command, args, False, reason)
            return self._reply(command, False, reason)
        return self._reply(command, True, None, data)

    def _role_of(self, user: str) -> Role | None:
        known = self.users.get(user) if self.users is not None else None
        return None if known is None else known.role

    def _reply(self, command: str, accepted: bool, reason: str | None,
               data: dict[str, Any] | None = None) -> CommandReply:
        return CommandReply(command=command, accepted=accepted, reason=reason,
                            state=self.sup.sm.state.value, data=data or {})

    async def _record(self, user: str, command: str, args: dict[str, Any], accepted: bool,
                      reason: str | None) -> dict[str, Any]:
        """Record a command durably before it is answered. A refusal is answered anyway (it
        changed nothing); an accepted command that could not be recorded raises NotRecorded,
        except a jog's stop, which answers that its record is pending (rule 9). The extra
        reply data is returned."""
        clean = {k: v for k, v in args.items() if k != "recipe_text"}
        try:
            await self.sup.record_command(user, command, clean, accepted, reason)
        except RecordsUnavailable as exc:
            # The supervisor has raised the alarm and holds a run.
            log.error("command.not_recorded", user=user, command=command, error=str(exc))  # noqa: TRY400 - the error says it all
            if accepted and command in ACT_FIRST_COMMANDS:
                return {"record": "pending", "note": RECORD_PENDING}
            if accepted:
                raise NotRecorded(command, exc.detail) from exc
        return {}

    # -- handlers --------------------------------------------------------------------------
    async def _start(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        line = self.sup.line
        recipe = await self._recipe_of(args)
        cursor, run_id = await self._interrupted_run_for(user, args, recipe)
        header = RunHeader(
            recipe_name=recipe.name, recipe_text=recipe.text, line=line.line,
            machine=line.machine, operator=str(args.get("operator") or user or getpass.getuser()),
            preform_serial=args.get("preform_serial"), bait_rod_lot=args.get("bait_rod_lot"),
            precursor_lot=args.get("precursor_lot"),
        )
        result = await self.sup.command("start", user, plan=plan_from_recipe(recipe, line),
                                        header=header, cursor=cursor, run_id=run_id)
        if not result.accepted:
            raise RecordedRefusal(result.reason or "refused")
        if run_id is not None:  # the supervisor records only a new run's start
            await self._record(user, "start", {"resume_run_id": run_id}, True, None)
            self._interrupted_runs = [r for r in self._interrupted_runs if r.id != run_id]
        return {"run_id": self.sup.run_id, "recipe": recipe.name, "passes":
                recipe.total_passes()}

    async def _recipe_of(self, args: dict[str, Any]) -> Recipe:
        text = args.get("recipe_text")
        if not isinstance(text, str) or not text.strip():
            raise Refused("start needs the recipe's text (recipe_text)")
        path = Path(str(args.get("recipe_path") or "<api>"))
        try:
            # In a worker process: no recipe holds the loop the heartbeat needs (issue 11).
            return await parse_recipe_off_loop(text, self.sup.line, path)
        except RecipeError as exc:
            issues = "; ".join(f"{i.field}: {i.reason}" if i.field else i.reason
                               for i in exc.errors)
            raise Refused(f"invalid recipe: {issues}") from None

    async def _interrupted_run_for(self, user: str, args: dict[str, Any],
                                   recipe: Recipe) -> tuple[Cursor | None, int | None]:
        """A start after a dead controller: resume the interrupted run (its cursor and id),
        or record it as abandoned first; refused while one waits for that decision."""
        resume, abandon = args.get("resume_run_id"), args.get("abandon_run_id")
        if resume is not None and abandon is not None:
            raise Refused("resume_run_id and abandon_run_id exclude each other")
        chosen = resume if resume is not None else abandon
        if chosen is not None:
            match = [r for r in self._interrupted_runs if r.id == int(chosen)]
            if not match:
                raise Refused(f"run {chosen} is not an interrupted run of this line")
            if resume is not None:
                ran = RecordsReader(self.records_db).get_run(match[0].id)
                why = resume_refusal(match[0], ran.recipe_text if ran else None,
                                     recipe.name, recipe.text)
                if why is not None:
                    raise Refused(why)
        if abandon is not None:
            await self.sup.records.end_run(int(abandon), "abandoned")
            await self._record(user, "abandon", {"run_id": int(abandon)}, True, None)
            self._interrupted_runs = self._read_interrupted()
        elif resume is not None:
            checkpoint = RecordsReader(self.records_db).last_checkpoint(int(resume))
            return (Cursor.from_json(checkpoint.state) if checkpoint else Cursor()), int(resume)
        elif self._interrupted_runs:
            r = self._interrupted_runs[0]
            raise Refused(f"run {r.id} ({r.recipe_name}) was interrupted: continue it with "
                          f"`povd start RECIPE --resume {r.id}` (resume_run_id={r.id}) or "
                          f"record it as abandoned with `--abandon {r.id}` "
                          f"(abandon_run_id={r.id})")
        return None, None

    async def _retry(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        if self.sup.sm.state is not State.SUSPENDED:
            raise Refused(f"retry applies to a suspended run, not in {self.sup.sm.state.value}")
        for command in ("hold", "unhold"):
            result = await self.sup.command(command, user, reason="retry")
            if not result.accepted:
                raise Refused(result.reason or "refused")
        return {}

    async def _ack(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        alarm_id = str(args["alarm_id"])
        event = self.sup.alarms.acknowledge(alarm_id, user, time.time())
        await self._record(user, "ack", args, True, None)
        return {"alarm_id": alarm_id, "changed": event is not None}

    async def _shelve(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        alarm_id = str(args["alarm_id"])
        duration = float(args.get("for_s") or args.get("duration_s") or 0)
        if duration <= 0:
            raise Refused("shelving needs a positive duration (for_s)")
        note = str(args.get("reason") or "")
        if not note:
            raise Refused("shelving needs a reason")
        self.sup.alarms.shelve(alarm_id, user, duration, time.time(), note)
        await self._record(user, "shelve", args, True, None)
        return {"alarm_id": alarm_id, "until": time.time() + duration}

    async def _mode(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        target = Mode(str(args["mode"]))
        leaving = self.sup.sm.mode is Mode.MAINTENANCE and target is Mode.PRODUCTION
        refused = self.sup.sm.can_change_mode(target)
        if refused is not None:
            raise Refused(refused.reason)
        if leaving:
            # Every device back to idle first: if that fails, the mode has not changed.
            await self.sup.maintenance.leave(user)
        self.sup.sm.set_mode(target, user)
        await self._record(user, "mode", args, True, None)
        return {"mode": target.value}

    async def _trim(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        power = None if args.get("power_kw") is None else float(args["power_kw"])
        traverse = None if args.get("traverse_pct") is None else float(args["traverse_pct"])
        reason = self.sup.trim_refusal(power, traverse)
        if reason is not None:
            raise Refused(reason)
        await self.sup.set_trim(power, traverse, user)
        await self._record(user, "trim", args, True, None)
        return {"power_kw": power, "traverse_pct": traverse}

    async def _add_passes(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        """Extra passes for a layer of the running deposit step (default: the current one),
        within the recipe's extra_passes; recorded with the layer they went to."""
        passes = _whole(args, "passes")
        if passes is None:
            raise Refused("add_passes needs passes: how many passes to add (1 or more)")
        layer = _whole(args, "layer")
        reason = self.sup.commands.add_passes_refusal(layer, passes)
        if reason is not None:
            raise Refused(reason)
        added = self.sup.commands.add_passes(layer, passes, user)
        await self._record(user, "add_passes", {**args, "layer": added.index}, True, None)
        return added.to_json()

    async def _jog(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        direction = {"+": 1, "-": -1, 1: 1, -1: -1, "1": 1, "-1": -1}.get(args["direction"])
        if direction is None:
            raise Refused("direction must be + or -")
        speed = None if args.get("speed") is None else float(args["speed"])
        what = await self.sup.maintenance.jog(str(args["axis"]), direction, speed, user,
                                              session=str(args.get("session") or user))
        if what == "started":
            await self._record(user, "jog", args, True, None)
        return {"lease": what, "lease_s": self.sup.maintenance.lease_s}

    async def _jog_stop(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        await self.sup.maintenance.jog_stop(str(args["axis"]), user)
        return await self._record(user, "jog_stop", args, True, None)

    async def _home(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        await self.sup.maintenance.home(str(args["axis"]), user)
        await self._record(user, "home", args, True, None)
        return {}

    async def _move(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        speed = None if args.get("speed") is None else float(args["speed"])
        what = await self.sup.maintenance.move(str(args["axis"]), float(args["position_mm"]),
                                               speed, user,
                                               session=str(args.get("session") or user))
        if what == "started":
            await self._record(user, "move", args, True, None)
        return {"lease": what, "lease_s": self.sup.maintenance.lease_s}

    async def _cool_rotation(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        """Rule 1: after an E-stop reset nothing turns by itself; this recorded command turns
        a hot rod at its cooling speed again."""
        rpm = await self.sup.restart_cooling_rotation(user)
        await self._record(user, "cool_rotation", args, True, None)
        return {"spindle_rpm": rpm}

    async def _purge(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        await self.sup.rest.purge(user)
        await self._record(user, "purge", args, True, None)
        return {"purge_s": self.sup.line.supervision.post_trip_purge_s}

    async def _device_test(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        data = await self.sup.maintenance.device_test(args, user)
        await self._record(user, "device_test", args, True, None)
        return data
