"""The run's tasks, owned by one object: the executor's task, the acting state's work (holding,
stopping, suspending) and the safety reaction in progress, each started in the supervisor's
TaskGroup.

Cancelling is the subtle part: ``cancel_now`` cancels without awaiting (a reaction's RF-off
write must go out before anything waits), ``cancel_executor`` / ``cancel_acting`` then wait until
the task is gone. A task never cancels or awaits itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], attempts: int = 20) -> None:
    """Cancel tasks and wait until they are done, cancelling again if need be: on Python 3.11
    ``asyncio.wait_for`` can swallow a cancellation that races with its inner future (fixed in
    3.12), which would leave a poller running forever."""
    for _ in range(attempts):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)


def _not_current(task: asyncio.Task[Any] | None) -> bool:
    return task is not None and task is not asyncio.current_task()


class RunTasks:
    """Starts, cancels and awaits the run's tasks; holds no policy."""

    def __init__(self) -> None:
        self._tg: asyncio.TaskGroup | None = None
        self._executor: asyncio.Task[None] | None = None
        self._acting: asyncio.Task[None] | None = None
        self._reaction: asyncio.Task[None] | None = None

    def attach(self, tg: asyncio.TaskGroup) -> None:
        """The supervisor's TaskGroup, once it has entered it."""
        self._tg = tg

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._tg is not None
        return self._tg.create_task(work, name=name)

    # -- the executor's task ---------------------------------------------------------------
    def start_executor(self, work: Coroutine[Any, Any, None]) -> None:
        self._executor = self.spawn(work, "executor")

    def executor_ended(self) -> None:
        """Called from the executor's own task once it has returned or failed, before it
        hands over to a reaction (which must not wait for the task it runs in)."""
        self._executor = None

    @property
    def executor_running(self) -> bool:
        return self._executor is not None

    @property
    def executor_gone(self) -> bool:
        return self._executor is None or self._executor.done()

    async def cancel_executor(self) -> None:
        task = self._executor
        self._executor = None
        if task is not None and not task.done():
            await cancel_and_wait([task])

    # -- the acting state's work -----------------------------------------------------------
    def start_acting(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._acting = self.spawn(work, name)

    async def cancel_acting(self) -> None:
        task = self._acting
        self._acting = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            await cancel_and_wait([task])

    def cancel_now(self, *, acting_too: bool) -> None:
        """Cancel the executor's task (and the acting work) without waiting for them."""
        tasks = (self._executor, self._acting) if acting_too else (self._executor,)
        for task in tasks:
            if task is not None and _not_current(task):
                task.cancel()

    # -- the safety reaction ---------------------------------------------------------------
    @property
    def reaction_busy(self) -> bool:
        return self._reaction is not None and not self._reaction.done()

    def start_reaction(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._reaction = self.spawn(work, name)

    async def finish_reaction(self, timeout_s: float) -> None:
        """Let a safety reaction finish its writes (bounded by the transports' timeouts);
        waiting for an operator or a recovery afterwards is not ours to do any more."""
        reaction = self._reaction
        if reaction is None or reaction.done():
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(reaction), timeout=timeout_s)
        reaction.cancel()
