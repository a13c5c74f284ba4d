"""A `povd-sim` of its own process, as the line PC runs it beside the controller (for tests
that kill or start controllers as processes), and a plain wait for them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def povd_sim(tmp_path: Path, time_scale: float) -> Iterator[Path]:
    """povd-sim serving the demo line (no pseudo-terminals); yields its endpoints file. Its
    log goes to ``sim.log`` beside it."""
    endpoints = tmp_path / "endpoints.json"
    with (tmp_path / "sim.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulators.serve", "serve", "--time-scale", str(time_scale),
             "--no-pty", "--endpoints-json", str(endpoints), "--log-json"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(endpoints.exists, 30, "povd-sim endpoints")
            yield endpoints
        finally:
            proc.terminate()
            proc.wait(timeout=15)
