"""``python -m dryrun`` (what ``povd run RECIPE --sim --virtual-time`` becomes): the recipe run
of ``povd run``, word for word, with the simulated line in this process and every clock the
virtual loop's. Prints the run as ``povd run`` does, then one JSON line: the dry run's figures
(wall and virtual seconds, clock jumps, the faults and where they landed).

Order matters here: the hash seed is fixed first (set and str hashes order some iterations:
fixed, two runs are the same run), then the clock is installed, and only then is the rest of
the program imported (defaults such as ``clock=time.time`` are bound at import)."""

from __future__ import annotations

import os
import sys

from dryrun.virtual_clock import install

if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(  # noqa: S606 - this very program again, with the hash seed fixed
        sys.executable, [sys.executable, "-m", "dryrun", *sys.argv[1:]],
        {**os.environ, "PYTHONHASHSEED": "0"})

CLOCK = install()

from dryrun.run import main  # noqa: E402 - after the clock is installed, on purpose

if __name__ == "__main__":
    sys.exit(main(CLOCK))
