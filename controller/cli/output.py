"""What every `povd` command shares: the exit codes, writing to the terminal, and loading the
line configuration (a bad one exits 2 with each error on its own line)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from controller.config.line import ConfigError, LineConfig, load_line_config

EXIT_OK, EXIT_ENDED_OTHERWISE, EXIT_INVALID, EXIT_REFUSED = 0, 1, 2, 3
EXIT_ERROR = EXIT_ENDED_OTHERWISE  # a client or admin command: connection or other error
# The reader of stdout went away (`povd runs list | head -1`): the status a shell knows for it
# (killed by SIGPIPE), distinct from the codes above.
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE


def stdout_to_devnull() -> None:
    """Output from now on goes nowhere, and its flushes no longer fail (Python's documented
    way: see the signal module's note on SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def out(text: str) -> None:
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away; the command carries on without an audience. `povd run` must
        # not let go of a run because its output was piped into `head` (rule 11).
        stdout_to_devnull()


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def load_config_or_exit(path: Path | None) -> LineConfig:
    try:
        return load_line_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            err(f"{exc.path}: {line}")
        raise SystemExit(EXIT_INVALID) from None
