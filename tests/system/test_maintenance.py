"""Maintenance mode over a whole simulated line (domain.md rule 6): jogs live on a lease,
setup speed with a door open, every action refused with the E-stop chain or the safety relay
open, soft limits, homing, device tests, and every device back to idle on leaving.

Axis speeds are mm/min of *process* time; the simulated plant moves `TIME_SCALE` times faster
in wall time while leases stay in wall time, so the scale is kept low enough for the carriage
not to reach its travel end during a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from controller.maintenance import TEST_POWER_MAX_KW
from controller.service import LineService
from controller.service_protocol import CommandReply
from controller.states import Mode
from controller.users import UserStore
from tests.system.rig import RECIPES, Rig, line_rig

pytestmark = pytest.mark.slow

TIME_SCALE = 10.0
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
FITTER = "max"  # the maintenance user
RENEW_S = 0.1


class Bench:
    """The rig, its service, and the maintenance user's commands."""

    def __init__(self, rig: Rig, service: LineService) -> None:
        self.rig = rig
        self.service = service
        self.plant = rig.sim.plant

    async def do(self, command: str, **args: object) -> CommandReply:
        return await self.service.execute(FITTER, command, dict(args))

    async def ok(self, command: str, **args: object) -> CommandReply:
        reply = await self.do(command, **args)
        assert reply.accepted, f"{command} {args}: {reply.reason}"
        return reply

    async def refused(self, command: str, **args: object) -> str:
        reply = await self.do(command, **args)
        assert not reply.accepted, f"{command} {args} was accepted"
        assert reply.reason is not None
        return reply.reason

    async def carriage_still(self, within_s: float) -> None:
        """Until the plant's carriage has stopped moving (two samples 0.2 s apart agree)."""
        last = self.plant.carriage_mm
        deadline = time.monotonic() + within_s
        while True:
            await asyncio.sleep(0.2)
            now = self.plant.carriage_mm
            if abs(now - last) < 0.05:
                return
            assert time.monotonic() < deadline, f"carriage still moving at {now:.1f} mm"
            last = now

    async def renew(self, seconds: float, speed: float) -> list[float]:
        """Renew a + jog of the carriage every RENEW_S for `seconds`; the positions seen."""
        positions = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reply = await self.ok("jog", axis="carriage", direction="+", speed=speed)
            assert reply.data["lease"] in ("started", "renewed")
            positions.append(self.plant.carriage_mm)
            await asyncio.sleep(RENEW_S)
        return positions


@asynccontextmanager_bench := None  # placeholder removed below
