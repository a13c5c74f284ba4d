import asyncio, time
from pathlib import Path
from tests.system.rig import line_rig, RECIPES
from controller.service import LineService
from controller.states import State

async def test_abort_during_stop(tmp_path: Path) -> None:
    async with line_rig(tmp_path, time_scale=10) as rig:
        svc = LineService(rig.sup, None, rig.db)
        r = await svc.execute("o", "start", {"recipe_text": (RECIPES/"long.yaml").read_text()})
        assert r.accepted
        await rig.wait_depositing(1)
        t0 = time.monotonic()
        stop = asyncio.create_task(svc.execute("o", "stop", {}))
        await rig.wait_state(State.STOPPING)
        t1 = time.monotonic()
        ab = await svc.execute("o", "abort", {})
        t2 = time.monotonic()
        s = await stop
        print("stopping after", t1-t0, "abort answered after", t2-t1, ab, "stop", s.accepted, time.monotonic()-t0)
