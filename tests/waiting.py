"""One way for a test to wait: ``eventually``. Repeat a call until its result is what the test
wants, a device error counting as "not yet"; fail with what was awaited after the deadline.
Deadlines are generous: tests must pass on a slow, noisy machine (speed is the benches')."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from drivers.errors import DeviceError

T = TypeVar("T")


def answered(_: Any) -> bool:
    """For ``ok``: any answer will do (the call not raising is the condition)."""
    return True


async def eventually(call: Callable[[], Awaitable[T]], ok: Callable[[T], bool] = bool, *,
                     timeout_s: float = 10.0, what: str = "the condition",
                     period_s: float = 0.02) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = await call()
        except DeviceError:
            if time.monotonic() > deadline:
                raise
        else:
            if ok(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(period_s)


async def first_failure(call: Callable[[], Awaitable[Any]], *, timeout_s: float = 10.0,
                        what: str = "the call to fail",
                        period_s: float = 0.02) -> DeviceError:
    """Repeat a call until it raises a device error (a fault takes effect on the next frame)
    and return that error; fail with what was awaited after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await call()
        except DeviceError as exc:
            return exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(period_s)
