"""The deployment files stay honest: the example line configuration loads and matches the
simulated line, the systemd units parse and call commands that exist, the udev rules name the
ports the line configuration opens, the broker enforces the ACL the controller relies on, and
docs/operations.md explains every file in deploy/."""

from __future__ import annotations

import argparse
import asyncio
import configparser
import contextlib
import io
import ipaddress
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.cli import main as povd_cli
from controller.config.line import BusConfig, LineConfig, load_line_config
from simulators import serve as povd_sim_cli
from tests.components import find_tool, require_tool

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
UDEV_RULES = DEPLOY / "udev" / "99-povd-serial.rules"
ACL = DEPLOY / "mosquitto" / "acl"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "povd.conf"
OPERATIONS = REPO / "docs" / "operations.md"
# Where docs/operations.md installs the virtualenv; the units name it in ExecStart.
INSTALLED_BIN = "/opt/povd/venv/bin/"
DOCUMENTATION_NETWORKS = [
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
]
SERIAL_PROTOCOLS = {"modbus-rtu", "alicat-ascii", "ascii"}


# -- the example line configuration ------------------------------------------------------------
@pytest.fixture(scope="module")
def example() -> LineConfig:
    return load_line_config(DEPLOY / "line-example.yaml")


@pytest.fixture(scope="module")
def sim() -> LineConfig:
    return load_line_config(DEPLOY / "line-sim.yaml")


def test_line_example_has_the_sim_lines_devices(example: LineConfig, sim: LineConfig) -> None:
    assert set(example.devices) == set(sim.devices)
    for name, device in sim.devices.items():
        assert example.devices[name].kind == device.kind, name
        assert example.devices[name].bus == device.bus, name
    assert {n: b.protocol for n, b in example.buses.items()} == {
        n: b.protocol for n, b in sim.buses.items()
    }
    assert not example.plant, "the simulator's physics has no place in a real line's config"


def _is_tcp(bus: BusConfig) -> bool:
    return bus.protocol == "modbus-tcp"


def test_line_example_names_a_real_endpoint_for_every_bus(example: LineConfig) -> None:
    for name, bus in example.buses.items():
        if _is_tcp(bus):
            assert bus.host is not None, name
            assert bus.port is not None, name
            assert bus.path is None, name
            # Documentation addresses only: a test or a careless copy must never reach a plant.
            address = ipaddress.ip_address(bus.host)
            assert any(address in net for net in DOCUMENTATION_NETWORKS), (name, bus.host)
        else:
            assert bus.protocol in SERIAL_PROTOCOLS, name
            assert bus.path is not None, name
            assert bus.path.startswith("/dev/povd-"), (name, bus.path)
            assert bus.host is None, name
            assert bus.port is None, name
        assert bus.endpoint().describe()


# -- systemd units -----------------------------------------------------------------------------
def _unit(path: Path) -> configparser.ConfigParser:
    # strict=False: systemd repeats keys (DeviceAllow=, Environment=); the last one wins here,
    # which is all these tests need.
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are CamelCase
    parser.read_string(path.read_text(), source=str(path))
    return parser


def _exec_start(path: Path) -> list[str]:
    return shlex.split(_unit(path)["Service"]["ExecStart"])


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _subcommand_word(parser: argparse.ArgumentParser, args: list[str]) -> str:
    """The first word that is not a global option or an option's value."""
    tokens = iter(args)
    for token in tokens:
        if not token.startswith("-"):
            return token
        option = token.split("=", 1)[0]
        action = parser._option_string_actions.get(option)
        assert action is not None, f"unknown global option {option}"
        if action.nargs != 0 and "=" not in token:
            next(tokens, None)
    raise AssertionError(f"no subcommand in {args}")


def _cli_parser(program: str) -> argparse.ArgumentParser:
    return {"povd": povd_cli._parser, "povd-sim": povd_sim_cli._parser}[program]()


def test_there_are_units_for_the_controller_and_the_simulator() -> None:
    assert {u.name for u in UNITS} == {"povd.service", "povd-sim.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_has_its_sections_and_runs_an_installed_program(unit: Path) -> None:
    parsed = _unit(unit)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
    argv = _exec_start(unit)
    assert argv[0].startswith(INSTALLED_BIN)
    assert Path(argv[0]).name in {"povd", "povd-sim"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_exec_start_calls_a_subcommand_that_exists(unit: Path) -> None:
    argv = _exec_start(unit)
    program = Path(argv[0]).name
    parser = _cli_parser(program)
    word = _subcommand_word(parser, argv[1:])
    if word not in _subcommands(parser):
        pytest.skip(f"`{program} {word}` is not in the CLI yet (issue 4 adds it)")
    # The whole command line parses: every option the unit passes exists.
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{unit.name}: {shlex.join(argv)}: {errors.getvalue()}")


def test_controller_unit_holds_to_the_service_contract() -> None:
    service = _unit(DEPLOY / "systemd" / "povd.service")["Service"]
    unit = _unit(DEPLOY / "systemd" / "povd.service")["Unit"]
    argv = _exec_start(DEPLOY / "systemd" / "povd.service")
    assert service["User"] == "povd"
    assert "dialout" in service["SupplementaryGroups"].split()
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    # A controlled stop (hold, ramp down, purge, cool-down) takes minutes: systemd must wait.
    assert service["TimeoutStopSec"] == "15min"
    assert service["StateDirectory"] == "povd"
    data_dir = argv[argv.index("--data-dir") + 1]
    assert data_dir == "/var/lib/povd"
    assert data_dir in service["ReadWritePaths"].split()
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    # PrivateDevices would hide the serial adapters; WatchdogSec needs sd_notify (not yet).
    assert service.get("PrivateDevices", "no") == "no"
    assert "WatchdogSec" not in service
    assert argv[argv.index("--http") + 1] == "127.0.0.1:8470"
    assert "mosquitto.service" in unit["After"].split()
    assert "network-online.target" in unit["Wants"].split()


def test_simulator_unit_writes_its_endpoints_into_its_runtime_dir() -> None:
    service = _unit(DEPLOY / "systemd" / "povd-sim.service")["Service"]
    argv = _exec_start(DEPLOY / "systemd" / "povd-sim.service")
    assert service["RuntimeDirectory"] == "povd-sim"
    assert argv[argv.index("--endpoints-json") + 1] == "/run/povd-sim/endpoints.json"
    assert "/run/povd-sim/endpoints.json" in service["ExecStartPost"]


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    installed = Path(sys.executable).parent
    if not (installed / "povd").exists() or not (installed / "povd-sim").exists():
        pytest.skip(f"povd / povd-sim are not installed beside {sys.executable}")
    for unit in UNITS:
        # verify checks that ExecStart's program exists: point it at this checkout's install.
        text = unit.read_text().replace(INSTALLED_BIN, f"{installed}/")
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # verify exits 0 on an unknown key or a bad value (it only warns): read what it says.
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if any(u.name in line for u in UNITS)]
    assert result.returncode == 0, result.stderr
    assert not complaints, "\n".join(complaints)


# -- udev rules --------------------------------------------------------------------------------
UDEV_ASSIGNMENT = re.compile(r'\s*([A-Z_]+(?:\{[^}]+\})?)\s*(==|!=|\+=|:=|=)\s*"([^"]*)"\s*(?:,|$)')


def _udev_rules() -> list[dict[str, tuple[str, str]]]:
    rules = []
    for number, line in enumerate(UDEV_RULES.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs = list(UDEV_ASSIGNMENT.finditer(line))
        # The pairs must cover the whole line: a typo that udev would skip fails here.
        assert "".join(m.group(0) for m in pairs) == line, f"line {number}: {line!r}"
        rules.append({m.group(1): (m.group(2), m.group(3)) for m in pairs})
    return rules


def test_udev_rules_match_adapters_by_serial_number_and_name_them() -> None:
    rules = _udev_rules()
    assert len(rules) == 4
    for rule in rules:
        assert rule["SUBSYSTEM"] == ("==", "tty")
        assert rule["ATTRS{idVendor}"][0] == "=="
        assert re.fullmatch(r"[0-9a-f]{4}", rule["ATTRS{idVendor}"][1])
        assert rule["ATTRS{idProduct}"][0] == "=="
        assert re.fullmatch(r"[0-9a-f]{4}", rule["ATTRS{idProduct}"][1])
        assert rule["ATTRS{serial}"][0] == "=="
        assert rule["ATTRS{serial}"][1]
        assert rule["SYMLINK"][0] == "+="
        assert rule["GROUP"] == ("=", "dialout")
        assert rule["MODE"] == ("=", "0660")
    serials = [rule["ATTRS{serial}"][1] for rule in rules]
    assert len(set(serials)) == len(serials), "two buses on one adapter"


def test_udev_symlinks_are_the_ports_the_example_line_opens(example: LineConfig) -> None:
    symlinks = {"/dev/" + rule["SYMLINK"][1] for rule in _udev_rules()}
    paths = {bus.path for bus in example.buses.values() if bus.path is not None}
    assert symlinks == paths == {
        "/dev/povd-gas", "/dev/povd-precursor", "/dev/povd-drives", "/dev/povd-gauge",
    }


# -- mosquitto ---------------------------------------------------------------------------------
def _acl_lines() -> list[str]:
    return [line.strip() for line in ACL.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_acl_lets_each_client_command_only_under_its_own_name() -> None:
    lines = _acl_lines()
    assert "pattern write povd/+/+/cmd/%u/#" in lines
    assert "pattern read povd/+/+/reply/%u/#" in lines
    controller = lines.index("user povd-controller")
    assert lines[controller + 1] == "topic readwrite povd/#"
    # No other line grants write: clients publish commands only.
    writers = [line for line in lines if line.split()[1:2] in (["write"], ["readwrite"])]
    assert writers == ["topic readwrite povd/#", "pattern write povd/+/+/cmd/%u/#"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _test_broker_config(tmp_path: Path, port: int) -> str:
    """deploy/mosquitto/povd.conf with its install paths and port swapped for the test's."""
    text = MOSQUITTO_CONF.read_text()
    swaps = {
        "listener 1883 127.0.0.1": f"listener {port} 127.0.0.1",
        "password_file /etc/mosquitto/povd.passwd": f"password_file {tmp_path / 'passwd'}",
        "acl_file /etc/mosquitto/povd.acl": f"acl_file {ACL}",
    }
    for installed, here in swaps.items():
        assert re.search(rf"^{re.escape(installed)}$", text, re.MULTILINE), installed
        text = re.sub(rf"^{re.escape(installed)}$", here, text, flags=re.MULTILINE)
    # As root, mosquitto drops to its own user before reading the files: keep it root here.
    return text + f"\nuser root\npersistence_location {tmp_path}/\nlog_dest stderr\n"


PASSWORDS = {"povd-controller": "controller-secret", "alice": "alice-secret",
             "bob": "bob-secret"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    require_tool("mosquitto", "mosquitto_passwd", package="mosquitto")
    mosquitto, passwd = find_tool("mosquitto"), find_tool("mosquitto_passwd")
    assert mosquitto is not None and passwd is not None
    for i, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([passwd, *create, "-b", str(tmp_path / "passwd"), user, password],
                       check=True, capture_output=True, timeout=30)
    port = _free_port()
    (tmp_path / "mosquitto.conf").write_text(_test_broker_config(tmp_path, port))
    log = (tmp_path / "mosquitto.log").open("wb")
    process = subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (tmp_path / "mosquitto.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "mosquitto did not listen in time"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.asynccontextmanager
async def _client(port: int, user: str | None, password: str | None = None) -> AsyncIterator[
    aiomqtt.Client
]:
    async with aiomqtt.Client(
        "127.0.0.1", port, username=user,
        password=password if password is not None else PASSWORDS.get(user or ""),
        identifier=f"test-{user}", protocol=aiomqtt.ProtocolVersion.V5, timeout=10,
    ) as client:
        yield client


async def _collect_until(client: aiomqtt.Client, last_topic: str) -> list[str]:
    topics: list[str] = []
    async with asyncio.timeout(15):
        async for message in client.messages:
            topics.append(message.topic.value)
            if message.topic.value == last_topic:
                return topics
    raise AssertionError("message stream ended")


async def test_broker_refuses_clients_without_a_valid_login(broker: int) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with _client(broker, None):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with _client(broker, "alice", "wrong"):
            pass


async def test_broker_enforces_the_acl(broker: int) -> None:
    machine = "povd/line1/povd1"
    async with _client(broker, "povd-controller") as controller, \
            _client(broker, "alice") as alice:
        # noLocal: the controller does not hear its own publications, only the clients'.
        await controller.subscribe("povd/#", options=SubscribeOptions(qos=1, noLocal=True))
        for topic in ("state", "telemetry", "alarms", "events", "reply/alice/#",
                      "reply/bob/#", "cmd/bob/#"):
            await alice.subscribe(f"{machine}/{topic}", qos=1)

        # Commands: alice's own arrive; one forged as bob is dropped by the broker. Published in
        # this order, so by the time her own arrives the forged one would have too.
        await alice.publish(f"{machine}/cmd/bob/start", b"forged", qos=1)
        await alice.publish(f"{machine}/cmd/alice/start", b"{}", qos=1)
        seen = await _collect_until(controller, f"{machine}/cmd/alice/start")
        assert f"{machine}/cmd/bob/start" not in seen

        # The machine's topics reach alice, and her replies, but not bob's replies or commands.
        await controller.publish(f"{machine}/state", b"idle", qos=1, retain=True)
        await controller.publish(f"{machine}/telemetry", b"{}", qos=1)
        await controller.publish(f"{machine}/alarms", b"{}", qos=1)
        await controller.publish(f"{machine}/reply/bob/1", b"bob's", qos=1)
        await controller.publish(f"{machine}/cmd/bob/start", b"as bob", qos=1)
        await controller.publish(f"{machine}/reply/alice/1", b"alice's", qos=1)
        await controller.publish(f"{machine}/events", b"last", qos=1)
        received = await _collect_until(alice, f"{machine}/events")
        assert received == [f"{machine}/{t}" for t in
                            ("state", "telemetry", "alarms", "reply/alice/1", "events")]

        # And alice cannot publish what only the controller may.
        await alice.publish(f"{machine}/state", b"forged", qos=1, retain=True)
        await alice.publish(f"{machine}/cmd/alice/hold", b"{}", qos=1)
        seen = await _collect_until(controller, f"{machine}/cmd/alice/hold")
        assert seen == [f"{machine}/cmd/alice/hold"]


# -- docs --------------------------------------------------------------------------------------
def test_operations_guide_explains_every_deploy_file() -> None:
    guide = OPERATIONS.read_text()
    files = [p.relative_to(REPO).as_posix() for p in sorted(DEPLOY.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    assert files
    missing = [f for f in files if f not in guide]
    assert not missing, f"docs/operations.md never mentions {missing}"
