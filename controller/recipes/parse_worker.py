"""Recipes read in a worker process, so that no recipe a request carries can hold the service's
event loop (or its GIL) while the safety cycle and the heartbeat need it (issue 11).

``parse_recipe`` is bounded work already (``loading``'s bounds); the worker is the second line:
whatever a recipe does to the parser, the loop only waits on a pipe, and a read that takes longer
than ``PARSE_TIMEOUT_S`` of wall time is refused and its worker killed. One worker process is
started on first use and kept. Measured on the 2-core dev box with the 4 KB
f-doped-cladding.yaml: 1.8 ms parsed in process, 2.3 ms through the kept worker, 515 ms with a
fresh process per recipe (a new interpreter's start and imports; the kept worker pays it once).

The worker is ``python -m controller.recipes.parse_worker`` over its stdin and stdout, not a
multiprocessing child: a spawned child re-runs the parent's ``__main__`` and a forked one
inherits the loop's threads and sockets; this one inherits nothing but the environment."""

from __future__ import annotations

import asyncio
import atexit
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

import structlog

from controller.config.line import LineConfig
from controller.recipes.loading import MAX_RECIPE_BYTES, parse_recipe, too_large
from controller.recipes.recipe import Recipe, RecipeError, RecipeIssue

log = structlog.get_logger(__name__)

PARSE_TIMEOUT_S = 10.0  # wall time to read one recipe; a valid one takes tens of milliseconds
START_TIMEOUT_S = 60.0  # a worker's interpreter start and imports, on a loaded 2-core machine

_Reply = tuple[str, object]


def _serve(requests: Connection, replies: Connection) -> None:
    """The worker's loop: (text, line, path) in, ("ok", Recipe) or ("refused", issues) out."""
    replies.send(("ready", None))
    while True:
        try:
            text, line, path = requests.recv()
        except (EOFError, OSError):
            return  # the service closed its end or died: nothing left to read for
        reply: _Reply
        try:
            reply = ("ok", parse_recipe(text, line, path))
        except RecipeError as exc:
            reply = ("refused", exc.errors)
        except Exception as exc:  # a parser bug refuses the recipe; the worker lives on
            reply = ("failed", f"{type(exc).__name__}: {exc}")
        replies.send(reply)


class RecipeReader:
    """One worker process, started when first needed and restarted after it is killed; recipes
    are read one at a time, on a thread of its own that only waits on the worker's pipe."""

    def __init__(self, timeout_s: float = PARSE_TIMEOUT_S,
                 start_timeout_s: float = START_TIMEOUT_S,
                 command: Sequence[str] = (sys.executable, "-m", __name__)) -> None:
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.command = list(command)  # the worker; tests give one that misbehaves
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._lock = threading.Lock()
        self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recipe-reader")

    async def parse(self, text: str, line: LineConfig, path: Path | None = None) -> Recipe:
        where = path or Path("<recipe>")
        if len(text) > MAX_RECIPE_BYTES:  # at least as many bytes: refused before the pipe
            raise RecipeError(where, [RecipeIssue("", too_large(len(text)))])
        loop = asyncio.get_running_loop()
        kind, value = await loop.run_in_executor(self._waiter, self._exchange, text, line, path)
        if kind == "ok" and isinstance(value, Recipe):
            return value
        if kind == "refused" and isinstance(value, list):
            raise RecipeError(where, value)
        raise RecipeError(where, [RecipeIssue("", str(value))])

    def close(self) -> None:
        """Stop the worker (a later parse starts a new one)."""
        with self._lock:
            self._stop()

    # The blocking side, on the waiter thread (a pipe wait releases the GIL).

    def _exchange(self, text: str, line: LineConfig, path: Path | None) -> _Reply:
        with self._lock:
            try:
                requests, replies = self._started()
            except (OSError, EOFError, TimeoutError) as exc:
                self._stop()
                log.exception("recipe_reader_start_failed")
                return "failed", f"the recipe reader could not start ({exc}): try again"
            try:
                requests.send((text, line, path))
                if not replies.poll(self.timeout_s):
                    self._stop()
                    log.warning("recipe_read_timed_out", timeout_s=self.timeout_s,
                                size=len(text))
                    return "failed", (f"the recipe took more than {self.timeout_s:g} s to read "
                                      "and was refused (a recipe reads in milliseconds)")
                reply: _Reply = replies.recv()
                return reply
            except (OSError, EOFError):
                code = self._process.poll() if self._process is not None else None
                self._stop()
                log.exception("recipe_reader_died", exitcode=code)
                return "failed", f"the recipe reader stopped (exit code {code}): refused"

    def _started(self) -> tuple[Connection, Connection]:
        if (self._process is not None and self._process.poll() is None
                and self._requests is not None and self._replies is not None):
            return self._requests, self._replies
        self._stop()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdin is not None  # PIPE asked for
        assert process.stdout is not None
        self._process = process
        self._requests = Connection(os.dup(process.stdin.fileno()), readable=False)
        self._replies = Connection(os.dup(process.stdout.fileno()), writable=False)
        process.stdin.close()
        process.stdout.close()
        if not self._replies.poll(self.start_timeout_s):
            raise TimeoutError(f"no answer in {self.start_timeout_s:g} s")
        self._replies.recv()  # "ready": imports done, so the read's timeout is the read's alone
        return self._requests, self._replies

    def _stop(self) -> None:
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        self._requests = self._replies = None
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


_reader: RecipeReader | None = None
_reader_lock = threading.Lock()


def recipe_reader() -> RecipeReader:
    """The process's reader, created on first use."""
    global _reader  # noqa: PLW0603 - one worker per process, created lazily
    with _reader_lock:
        if _reader is None:
            _reader = RecipeReader()
            atexit.register(_reader.close)  # the worker ends with the service, not after it
        return _reader


async def parse_recipe_off_loop(text: str, line: LineConfig, path: Path | None = None) -> Recipe:
    """``parse_recipe`` in the worker process: a Recipe, or a RecipeError (including a read that
    took longer than ``PARSE_TIMEOUT_S``); the loop never runs the parser."""
    return await recipe_reader().parse(text, line, path)


def _main() -> None:
    """The worker's side: requests on stdin, replies on a copy of stdout, and stdout itself
    pointed at stderr so that nothing printed can corrupt a reply."""
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    _serve(Connection(os.dup(0), writable=False), replies)


if __name__ == "__main__":
    _main()
