"""An asyncio event loop whose clock is virtual: time stands still while anything is ready to
run, and jumps to the next timer once every task waits on a timer.

Nothing but the loop moves the clock, so a run is a function of its inputs: the same timers
fire in the same order at the same virtual instants whatever the machine's load. Two kinds of
waiting are not "waiting on a timer" and hold the clock still:
- I/O ready now: every socket is polled (without blocking) before each jump. The controller and
  the simulated line share the process and talk over loopback TCP, where a sent frame is in the
  peer's receive queue when ``send`` returns, so a frame in flight is never jumped over.
- another thread at work (the run records' SQLite writer, ``asyncio.to_thread``): a record
  takes no virtual time. The kernel's scheduler state of each other thread of the process says
  whether it is working (running, or in an uninterruptible wait such as fsync); while one is,
  the loop waits for it in real time instead of jumping.

The loop keeps its time on a ``VirtualClock`` (dryrun/virtual_clock.py), which the dry run's
process also puts behind ``time.monotonic`` and ``time.time``."""

from __future__ import annotations

import asyncio
import os
import selectors
import threading

from dryrun.virtual_clock import VirtualClock

# Real seconds to wait at a time for another thread's work: short, since the thread's result
# wakes the loop anyway (call_soon_threadsafe writes to the loop's self-pipe).
_THREAD_WAIT_S = 0.001
_WORKING_STATES = (b"R", b"D")  # running (or runnable), uninterruptible wait (disk)


class OtherThreads:
    """Whether any other thread of this process is at work, from the kernel's view of it
    (Linux: /proc/self/task/<tid>/stat; a thread parked on a queue or lock is 'S'). A woken
    thread is 'R' from the moment it is woken, so work handed over is never missed."""

    def __init__(self) -> None:
        self._ids: tuple[int, ...] = ()
        self._stats: list[int] = []  # open /proc stat files, read again with pread
        self._stale = True

    def working(self) -> bool:
        # Asked before every select, so kept cheap: the thread list is looked up again only
        # when the number of threads changes, and each stat file is read without reopening.
        if self._stale or threading.active_count() - 1 != len(self._ids):
            self._reopen()
        for fd in self._stats:
            try:
                text = os.pread(fd, 512, 0)
            except ProcessLookupError:  # it ended: look the threads up again next time
                self._stale = True
                continue
            # The state follows the command name, which is in parentheses and may hold spaces.
            at = text.rfind(b")") + 2
            if text[at : at + 1] in _WORKING_STATES:
                return True
        return False

    def _reopen(self) -> None:
        self.close()
        me = threading.get_native_id()
        ids = tuple(t.native_id for t in threading.enumerate()
                    if t.native_id is not None and t.native_id != me)
        for tid in ids:
            try:
                self._stats.append(os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY))
            except FileNotFoundError:  # it ended meanwhile
                continue
        self._ids = ids
        self._stale = False

    def close(self) -> None:
        for fd in self._stats:
            os.close(fd)
        self._stats = []
        self._ids = ()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a virtual clock (see the module's docstring)."""

    _selector: selectors.BaseSelector  # BaseSelectorEventLoop's, not declared in typeshed

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.jumps = 0
        self.thread_waits = 0
        self._threads = OtherThreads()
        self._real_select = self._selector.select
        self._selector.select = self._select  # type: ignore[method-assign] # the loop's own

    def time(self) -> float:
        return self.clock.now

    def close(self) -> None:
        self._threads.close()
        super().close()

    def _select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]]
        # Work handed to a thread is finished before the loop runs anything else, whatever is
        # ready: its result then always comes back at the same point of the run (one batch of
        # callbacks after it was asked for), and at the same virtual instant.
        while self._threads.working():
            self.thread_waits += 1
            self._real_select(_THREAD_WAIT_S)  # woken early by the thread's result
        # Threads first, then sockets: a result handed over just before the thread parked is
        # on the self-pipe, seen here.
        ready = self._real_select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only the outside world can wake us
            ready = self._real_select(None)
            return ready
        self._jump_to_next_timer(timeout)
        return ready

    def _jump_to_next_timer(self, timeout: float) -> None:
        # To the earliest timer's own instant (not now + timeout, which rounds), so that
        # _run_once finds it due; _run_once has already dropped cancelled timers at the head.
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        target = scheduled[0].when() if scheduled else self.clock.now + timeout
        self.clock.now = max(self.clock.now, target)
        self.jumps += 1
