"""The kill -9 campaign's path in CI, small: bench/crash_campaign.py with 3 kills against one
separate povd-sim. Each kill leaves every acknowledged record in the file, the machine safe
without a controller, and records that `povd runs verify` passes; the long campaign (100+
kills) is a bench, its last result in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CAMPAIGN = Path(__file__).resolve().parents[2] / "bench" / "crash_campaign.py"


@pytest.mark.timeout(600)  # three controller start-ups and kills: about 30 s, far more under load
def test_three_kills_lose_no_record_and_leave_the_machine_safe(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(CAMPAIGN), "3", "7", "--work", str(tmp_path), "--kills-detail"],
        capture_output=True, text=True, timeout=580, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    context = json.dumps(result, indent=1)[:4000]
    assert result["kills"] == 3
    assert result["acknowledged_events"] > 0, context
    assert result["records_lost"] == 0, context
    assert result["unsafe_after_kill"] == 0, context
    assert result["unsafe_at_restart"] == 0, context
    assert result["kills_with_findings"] == 0, context
    assert result["final_verify"]["exit_code"] == 0, context
    assert result["final_verify"]["runs"] >= 1, context
