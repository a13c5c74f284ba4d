"""A `povd` command whose reader has gone (`povd runs list | head -1`) ends quietly: no
traceback, nothing on stderr. The pipe's read end is closed before the command starts, so
its first write meets the closed pipe every time (no race with a reader)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recorded_run import record_run

EXIT_S = 60.0


def povd_into_closed_pipe(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line is written
    try:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli.main", "--data-dir", str(data_dir), *args],
            stdout=write_end, stderr=subprocess.PIPE, timeout=EXIT_S, check=False)
    finally:
        os.close(write_end)


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    await record_run(tmp_path / "records.sqlite3")
    return tmp_path


@pytest.mark.parametrize("command", [["runs", "list"], ["runs", "report", "1"],
                                     ["runs", "report", "1", "--json"], ["runs", "show", "1"]])
def test_a_closed_pipe_ends_a_records_command_quietly(data_dir: Path, command: list[str]) -> None:
    done = povd_into_closed_pipe(data_dir, *command)
    assert done.stderr == b""
    # The command did its work (its output went nowhere), so it ends as it would have.
    assert done.returncode == 0


def test_output_written_past_out_ends_as_a_closed_pipe() -> None:
    """Output that does not go through ``out`` (a library writing to stdout) meets the closed
    pipe in main's last flush at the latest: exit 141, as a shell reports SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    script = ("import sys\n"
              "from controller.cli import main as cli\n"
              "cli._dispatch = lambda argv: sys.stdout.write('row\\n' * 50_000)\n"
              "cli.main([])\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=EXIT_S, check=False)
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode == 128 + signal.SIGPIPE


def test_a_shell_pipe_into_head(data_dir: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{sys.executable}" -m controller.cli.main '
                       f'--data-dir "{data_dir}" runs report 1 | head -1'],
        capture_output=True, text=True, timeout=EXIT_S, check=False)
    assert done.stderr == ""
    assert done.stdout.startswith("Run report 1: ")
    assert done.returncode == 0
