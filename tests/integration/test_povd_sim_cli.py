"""``povd-sim`` as a user runs it: a server process that writes its endpoints document once
every device listens, the fault / status / clear client commands against it, a clean exit on
SIGTERM, and a refusal of an invalid line configuration.

Subprocesses run under ``sys.executable`` from the repository root, so the test needs no
installed console script; outcomes are polled with generous deadlines, never slept for."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.config.line import DEVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 60.0  # imports on a slow 2-core CI machine
COMMAND_TIMEOUT_S = 60.0
TIME_SCALE = 50


def _povd_sim(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulators.serve", *args]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _povd_sim(*args), cwd=ROOT, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def _control(document: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """One request on the control channel, from a plain blocking socket (no project code)."""
    address = (document["control"]["host"], int(document["control"]["port"]))
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as stream:
            reply: dict[str, Any] = json.loads(stream.readline())
    return reply


class Server:
    def __init__(self, process: subprocess.Popen[bytes], endpoints: Path, log: Path) -> None:
        self.process = process
        self.endpoints = endpoints
        self.log = log

    def document(self) -> dict[str, Any]:
        """Wait for the endpoints file; it is written atomically, so it parses once it exists."""
        end = time.monotonic() + STARTUP_DEADLINE_S
        while not self.endpoints.exists():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"povd-sim exited {self.process.returncode}: {self.log.read_text()}"
                )
            if time.monotonic() > end:
                raise AssertionError("povd-sim never wrote its endpoints")
            time.sleep(0.05)
        document: dict[str, Any] = json.loads(self.endpoints.read_text())
        return document


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    endpoints = tmp_path / "endpoints.json"
    log = tmp_path / "povd-sim.log"
    # Logs go to a file, not a pipe: a pipe nobody drains would block the server once full.
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            _povd_sim("serve", "--time-scale", str(TIME_SCALE), "--endpoints-json",
                      str(endpoints)),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
        )
        try:
            yield Server(process, endpoints, log)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=COMMAND_TIMEOUT_S)


def test_serve_fault_status_clear_and_sigterm(server: Server) -> None:
    document = server.document()
    assert document["time_scale"] == TIME_SCALE
    assert set(document["devices"]) == set(DEVICE_NAMES)
    assert isinstance(document["control"]["port"], int)
    for name, entry in document["devices"].items():
        assert {"protocol", "host", "port", "unit", "path"} <= set(entry), name
        assert entry["port"] > 0, name
    assert not list(server.endpoints.parent.glob("*.tmp"))  # the temporary file was renamed
    assert _control(document, {"cmd": "ping"}) == {"ok": True}

    endpoints = str(server.endpoints)
    fault = _run("fault", "--endpoints", endpoints, "rf", "silent", "--for", "5")
    assert fault.returncode == 0, fault.stderr
    reply = json.loads(fault.stdout)
    assert reply["ok"] is True
    assert reply["fault"]["device"] == "rf"
    assert reply["fault"]["kind"] == "silent"
    assert 0 < reply["fault"]["remaining_s"] <= 5
    active = _control(document, {"cmd": "faults"})["faults"]
    assert [(f["device"], f["kind"]) for f in active] == [("rf", "silent")]

    status = _run("status", "--endpoints", endpoints)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["plant"]["rod_diameter_mm"] == pytest.approx(30.0)
    assert [(f["device"], f["kind"]) for f in shown["faults"]] == [("rf", "silent")]

    clear = _run("clear", "--endpoints", endpoints)
    assert clear.returncode == 0, clear.stderr
    assert json.loads(clear.stdout) == {"ok": True, "cleared": 1}
    assert _control(document, {"cmd": "faults"})["faults"] == []

    refused = _run("fault", "--endpoints", endpoints, "rf", "meltdown")
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["ok"] is False

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=COMMAND_TIMEOUT_S) == 0
    assert not server.endpoints.exists()


def test_fault_params_reach_the_simulator(server: Server) -> None:
    document = server.document()
    fault = _run("fault", "--endpoints", str(server.endpoints), "mfc_o2", "drift",
                 "--param", "offset=1.5", "--param", "channel=mass_slpm")
    assert fault.returncode == 0, fault.stderr
    active = _control(document, {"cmd": "faults"})["faults"]
    assert active == [{"device": "mfc_o2", "kind": "drift", "remaining_s": None,
                       "params": {"offset": 1.5, "channel": "mass_slpm"}}]


def test_o2_enrichment_fault_from_the_command_line(server: Server) -> None:
    document = server.document()
    fault = _run("fault", "--endpoints", str(server.endpoints), "safety_io", "o2_enrichment",
                 "--param", "value=24.5", "--for", "30")
    assert fault.returncode == 0, fault.stderr
    active = _control(document, {"cmd": "faults"})["faults"]
    assert [(f["device"], f["kind"], f["params"]) for f in active] == [
        ("safety_io", "o2_enrichment", {"value": 24.5})
    ]
    cleared = _run("clear", "--endpoints", str(server.endpoints), "safety_io", "o2_enrichment")
    assert cleared.returncode == 0, cleared.stderr
    assert _control(document, {"cmd": "faults"})["faults"] == []


def test_invalid_config_exits_2_with_the_error_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("line: l1\nmachine: m1\nbuses: {}\ndevices: {}\n")
    endpoints = tmp_path / "endpoints.json"
    result = _run("serve", "--config", str(config), "--endpoints-json", str(endpoints))
    assert result.returncode == 2
    assert "devices missing" in result.stderr
    assert str(config) in result.stderr
    assert not endpoints.exists()


def test_missing_config_exits_2(tmp_path: Path) -> None:
    result = _run("serve", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr
