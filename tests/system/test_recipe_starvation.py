"""Issue 11, as an operator found it: a hostile recipe sent to `povd serve` must not starve the
service. Alias bombs as starts and as validations, all at once: every one is refused as too many
aliases, /api/status answers all the while, the safety PLC (in povd-sim, its own process) never
loses the controller's heartbeat, and a good recipe still validates. (Before the bounds, one
such start held the loop for minutes: every status call timed out and the heartbeat was lost.)

The heaviest recipe the bounds let through (``heaviest_recipe``) reads in the worker, but its
forecast and its 130 KB reply are the service's own work: on a loaded 2-core machine three at
once make safety cycles overrun their 10 ms period and the PLC miss beats, so it is left out of
this test (reported to the lead)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controller.cli.service_client import ServiceClient
from controller.config.line import load_line_config
from controller.recipes.loading import MAX_RECIPE_BYTES, MAX_RECIPE_NODES, parse_recipe
from controller.service.protocol import CommandReply
from tests.system.test_serve import PASSWORDS, add_user, serving
from tests.unit.test_recipe_bounds import alias_bomb

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAYER = ("{passes: 1, power_kw: 50, o2_slpm: 80, n2_slpm: 30, sicl4_g_min: 20, "
         "traverse_mm_min: 150, spindle_rpm: 30, coil_gap_mm: 30}")
LAYER_NODES = 17  # the mapping and its 8 keys and 8 values


def heaviest_recipe() -> str:
    """The smoke test with its deposit step as one layer named as often as the node bound
    allows: a valid recipe that costs the most to read and check."""
    smoke = (ROOT / "recipes/smoke-test.yaml").read_text()
    head, rest = smoke.split("  # 3. Nine")
    tail = "  # 4." + rest.split("  # 4.")[1]
    layers = (MAX_RECIPE_NODES - 300) // LAYER_NODES  # room for the other steps' nodes
    deposit = f"  - step: deposit\n    layers: [&l {LAYER}{', *l' * (layers - 1)}]\n\n"
    return head + deposit + tail


def test_the_heaviest_recipe_is_within_the_bounds_and_valid() -> None:
    text = heaviest_recipe()
    assert len(text.encode()) < MAX_RECIPE_BYTES
    assert parse_recipe(text, load_line_config()).total_passes() > 500


def safety_of(status: dict[str, Any]) -> dict[str, Any]:
    safety: dict[str, Any] = status["telemetry"]["safety"]
    return safety


def test_hostile_recipes_do_not_starve_the_service(tmp_path: Path) -> None:
    add_user(tmp_path / "data", "olga")
    with serving(tmp_path) as server, ServiceClient(server.url) as client:
        client.login("olga", PASSWORDS["olga"])
        before = client.status()
        assert before["state"] == "Idle" and all(before["links"].values()), before["links"]
        assert safety_of(before)["heartbeat_ok"]

        seen: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=6) as pool:
            starts: list[Future[CommandReply]] = [
                pool.submit(client.command, "start", {"recipe_text": alias_bomb()})
                for _ in range(3)]
            checks: list[Future[dict[str, Any]]] = [
                pool.submit(client.validate, alias_bomb()) for _ in range(3)]
            while not all(f.done() for f in [*starts, *checks]):
                seen.append(client.status())  # answered, or the client's timeout fails it
        seen.append(client.status())

        for start in starts:
            reply = start.result()
            assert not reply.accepted
            assert "too many aliases" in (reply.reason or "")
        for check in checks:
            assert not check.result()["valid"]
            assert "too many aliases" in check.result()["errors"][0]["reason"]
        good = client.validate((ROOT / "recipes/smoke-test.yaml").read_text())
        assert good["valid"] and good["name"] == "smoke-test"
        assert len(seen) > 1
        assert all(status["state"] == "Idle" for status in seen)
        # The PLC counts the controller's beats all the while (a latch from before stays).
        lost = [(i, status["alarms"]) for i, status in enumerate(seen)
                if not safety_of(status)["heartbeat_ok"]]
        assert not lost, f"heartbeat lost in {len(lost)} of {len(seen)} statuses: {lost[:3]}"
        latched = safety_of(before)["heartbeat_latched"]
        assert all(safety_of(status)["heartbeat_latched"] == latched for status in seen)
        assert all(status["links"]["safety_io"] for status in seen), "safety I/O link lost"
        assert server.terminate_and_wait() == 0
