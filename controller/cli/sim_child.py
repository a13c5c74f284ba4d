"""``--sim``: start povd-sim as a child process that dies with the controller, even on
kill -9 (Linux's parent-death signal), and wait for its endpoints document."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class SimulatorChild:
    def __init__(
        self, config: Path | None, time_scale: float, *, startup_timeout_s: float = 30
    ) -> None:
        self.config = config
        self.time_scale = time_scale
        self.startup_timeout_s = startup_timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix="povd-sim-")
        self.endpoints_path = Path(self._dir.name) / "endpoints.json"
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        args = [sys.executable, "-m", "simulators.serve", "serve",
                "--time-scale", str(self.time_scale),
                "--endpoints-json", str(self.endpoints_path), "--log-json"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self.process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent,
            # Its own session: Ctrl-C at the operator's terminal must reach the controller
            # (which holds the run) and not kill the machine under it.
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.endpoints_path.exists():
            if self.process.returncode is not None:
                raise RuntimeError(f"povd-sim exited with {self.process.returncode} at start")
            if time.monotonic() > deadline:
                raise RuntimeError("povd-sim did not write its endpoints in time")
            await asyncio.sleep(0.05)
        return self

    def endpoints(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.endpoints_path.read_text())
        return document

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._dir.cleanup()
