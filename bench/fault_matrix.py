"""The fault matrix, whole or sampled: every situation x first fault x (no second fault, or
each other one), each case on the wire (tests/system/fault_matrix.py). Prints JSON; with
--write-doc, puts the summary into docs/safety.md.

    .venv/bin/python bench/fault_matrix.py [--sample N] [--seed S] [--write-doc]

The whole product is 2,560 cases of about six seconds each (four hours on 2 cores); --sample N
runs N of them chosen at random (every single-fault case first when N allows)."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.config.logging_setup import configure_logging
from tests.system.fault_matrix import Case, Outcome, full_product, run_case

DOC = Path(__file__).resolve().parent.parent / "docs" / "safety.md"
BEGIN = "<!-- fault matrix: written by bench/fault_matrix.py --write-doc -->"
END = "<!-- end of fault matrix -->"


def choose(sample: int | None, seed: int) -> list[Case]:
    cases = full_product()
    if sample is None or sample >= len(cases):
        return cases
    singles = [c for c in cases if c.second is None]
    pairs = [c for c in cases if c.second is not None]
    rng = random.Random(seed)
    if sample <= len(singles):
        return rng.sample(singles, sample)
    return singles + rng.sample(pairs, sample - len(singles))


async def run(cases: list[Case]) -> list[Outcome]:
    outcomes = []
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                outcome = await run_case(case, Path(tmp))
            except Exception as exc:  # a case that could not reach its situation
                outcome = Outcome(case, False, 0.0, [f"{type(exc).__name__}: {exc}"])
        outcomes.append(outcome)
        print(json.dumps({"case": case.id, "ok": outcome.ok, "s": round(outcome.seconds, 1),
                          "problems": outcome.problems}), file=sys.stderr)
    return outcomes


def summary(outcomes: list[Outcome], command: str, wall_s: float) -> dict[str, object]:
    failed = [o for o in outcomes if not o.ok]
    return {
        "command": command,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "cases": len(outcomes),
        "passed": len(outcomes) - len(failed),
        "failed": [{"case": o.case.id, "problems": o.problems} for o in failed],
        "wall_s": round(wall_s, 1),
    }


def write_doc(result: dict[str, object]) -> None:
    text = DOC.read_text()
    failed = result["failed"]
    assert isinstance(failed, list)
    body = [BEGIN, "", f"Last run: `{result['command']}` on {result['machine']}, "
            f"{time.strftime('%Y-%m-%d')}: **{result['passed']} of {result['cases']} cases "
            f"passed** in {result['wall_s']} s.", ""]
    body += [f"- failed: `{f['case']}`: {'; '.join(f['problems'])}" for f in failed]
    body += ["", END]
    block = "\n".join(body)
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## The fault matrix\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    configure_logging(json=True, level="CRITICAL")
    cases = choose(args.sample, args.seed)
    started = time.monotonic()
    outcomes = asyncio.run(run(cases))
    command = "python bench/fault_matrix.py" + (
        f" --sample {args.sample} --seed {args.seed}" if args.sample else "")
    result = summary(outcomes, command, time.monotonic() - started)
    print(json.dumps(result, indent=2))
    if args.write_doc:
        write_doc(result)


if __name__ == "__main__":
    main()
