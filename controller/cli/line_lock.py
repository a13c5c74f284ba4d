"""One controller per line (domain.md rule 8), the early local check: an exclusive,
non-blocking lock on a file in the data dir. The kernel releases it when the process dies, even
on kill -9, so a crash never leaves a stale lock behind.

The data dir depends on the user and ``POVD_DATA_DIR``, so this lock cannot see a controller
run by another user or on another PC. The line itself is claimed at the machine: the safety
PLC counts heartbeats only from one owner id (``Pollers.claim_line``; docs/devices.md, safety
PLC). This lock stays for its clear, immediate error on the usual mistake."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from controller.cli.output import err


class LineLocked(Exception):
    def __init__(self, line: str, path: Path, holder: str) -> None:
        super().__init__(f"another controller holds line {line} ({path}: {holder}); stop it "
                         f"first (its pid is in {path})")
        self.line = line
        self.path = path
        self.holder = holder


def take_line_lock(data_dir: Path, line: str) -> LineLock:
    """Create the data dir and take the line's lock (raises LineLocked if it is held)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = LineLock(data_dir, line)
    lock.acquire()
    return lock


class LineLock:
    def __init__(self, data_dir: Path, line: str) -> None:
        self.line = line
        self.path = data_dir / f"{line}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LineLocked(self.line, self.path, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def line_lock_or_refusal(data_dir: Path, line: str) -> LineLock | None:
    """The line lock, or None after saying on stderr why not (another controller holds it):
    the refusal every `povd` command that drives the line gives (rule 8)."""
    try:
        return take_line_lock(data_dir, line)
    except LineLocked as exc:
        err(f"refused: {exc}")
        return None
