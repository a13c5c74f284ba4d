"""What every `povd` command shares: the exit codes, writing to the terminal, and loading the
line configuration (a bad one exits 2 with each error on its own line)."""

from __future__ import annotations

import sys
from pathlib import Path

from controller.config.line import ConfigError, LineConfig, load_line_config

EXIT_OK, EXIT_ENDED_OTHERWISE, EXIT_INVALID, EXIT_REFUSED = 0, 1, 2, 3
EXIT_ERROR = EXIT_ENDED_OTHERWISE  # a client or admin command: connection or other error


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


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
