"""A real mosquitto for integration tests: a loopback port, a password file and the plant's ACL.

Tests never mock the broker (style.md: aiomqtt's practice). The broker runs as a subprocess with
a generated configuration; ``stop()`` / ``start()`` keep the same port so reconnects can be tested.
Tests that use the ``mosquitto`` fixture skip, with the reason, when mosquitto is not installed
(and fail where ``CI`` is set: tests/components.py).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import find_tool, require_tool

CONTROLLER_USER = "povd-controller"
# Every user the tests may connect as, with the password the broker knows.
DEFAULT_USERS: dict[str, str] = {
    CONTROLLER_USER: "controller-secret",
    "alice": "alice-secret",
    "bob": "bob-secret",
}
# The plant's ACL (issue 4): a client may publish commands only under its own username; anyone
# authenticated may read the machine's topics; the controller may read and write all of povd/#.
# ``pattern`` lines apply to every user; ``topic`` lines to the ``user`` above them.
DEFAULT_ACL = f"""\
pattern write povd/+/+/cmd/%u/#
pattern read povd/#

user {CONTROLLER_USER}
topic readwrite povd/#
"""
_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerError(RuntimeError):
    def __init__(self, what: str, log: str) -> None:
        super().__init__(f"mosquitto {what}; its log:\n{log}")
        self.log = log


class MosquittoBroker:
    """One mosquitto subprocess on 127.0.0.1; restartable on the same port."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, users: dict[str, str] | None = None,
                 acl: str = DEFAULT_ACL, *, persistence: bool = False) -> None:
        """``persistence``: sessions, their queued messages and retained messages survive a
        restart (saved at a clean stop), as on the line PC (deploy/mosquitto/povd.conf)."""
        binary, passwd = find_tool("mosquitto"), find_tool("mosquitto_passwd")
        if binary is None or passwd is None:
            raise FileNotFoundError("mosquitto and mosquitto_passwd are needed")
        self.binary = binary
        self._passwd = passwd
        self.workdir = workdir
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.port = _free_port()
        self.log_path = workdir / "mosquitto.log"
        self.persistence = persistence
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_files(passwd, acl)

    def _write_files(self, passwd: str, acl: str) -> None:
        password_file = self.workdir / "passwd"
        for i, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run([passwd, "-b", *create, str(password_file), user, password],
                           check=True, capture_output=True)
        acl_file = self.workdir / "acl"
        acl_file.write_text(acl)
        # Readable by the mosquitto user too, in case a build ignores ``user root``.
        for path in (password_file, acl_file):
            path.chmod(0o644)
        self.workdir.chmod(0o755)
        self.password_file, self.acl_file = password_file, acl_file

    def _write_config(self) -> Path:
        config = self.workdir / "mosquitto.conf"
        persistence = (f"persistence true\npersistence_location {self.workdir}/\n"
                       if self.persistence else "persistence false\n")
        config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous false\n"
            f"password_file {self.password_file}\n"
            f"acl_file {self.acl_file}\n"
            f"{persistence}"
            # As root, mosquitto drops to its own user before reading the files; stay root.
            "user root\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        return config

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """Start and wait until the port accepts connections (same port on a restart)."""
        assert not self.running, "already running"
        config = self._write_config()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([self.binary, "-c", str(config)],
                                          stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"exited with {self._proc.returncode}", self.log())
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"did not listen on {self.port} within {_START_TIMEOUT_S} s", self.log())

    def stop(self) -> None:
        """Terminate: the broker closes every client connection."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def set_password(self, user: str, password: str) -> None:
        """Rewrite one user's password in the file; effective at the next start or reload()."""
        subprocess.run([self._passwd, "-b", str(self.password_file), user, password],
                       check=True, capture_output=True)

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads the password file and the ACL, keeping its clients."""
        assert self._proc is not None, "not running"
        self._proc.send_signal(signal.SIGHUP)

    # The async forms keep the event loop (and the bridge under test) running meanwhile.
    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)


def start_broker(workdir: Path, users: dict[str, str] | None = None,
                 acl: str = DEFAULT_ACL, *, persistence: bool = False) -> MosquittoBroker:
    """A started broker; a port taken between choosing and binding it is retried."""
    for attempt in range(3):
        broker = MosquittoBroker(workdir, users, acl, persistence=persistence)
        try:
            broker.start()
            return broker
        except BrokerError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running mosquitto with DEFAULT_USERS and DEFAULT_ACL (tests.components: skipped if
    not installed, failed under CI)."""
    require_tool("mosquitto", "mosquitto_passwd", package="mosquitto")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = start_broker(workdir)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def persistent_mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Like ``mosquitto``, with persistence on (the line PC's setting, deploy/mosquitto): a
    restart keeps the sessions, their queued messages and the retained messages."""
    require_tool("mosquitto", "mosquitto_passwd", package="mosquitto")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = start_broker(workdir, persistence=True)
    try:
        yield broker
    finally:
        broker.stop()
