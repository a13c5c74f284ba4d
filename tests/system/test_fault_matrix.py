"""The fault matrix in CI: a fixed set that covers every safety-input fault and link loss in
each class of situation (a run, at rest, maintenance), with a worse second fault after many
of them; every case on the wire. The whole product: ``bench/fault_matrix.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.fault_matrix import Case, covering_set, run_case

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", covering_set(), ids=lambda c: c.id)
async def test_the_machine_reaches_the_envelope(case: Case, tmp_path: Path) -> None:
    outcome = await run_case(case, tmp_path)
    assert outcome.ok, outcome.problems
