"""The HMI in a real browser: Debian's Chromium driven by Playwright against `povd serve` on
the simulated line (povd-sim in its own process, so a test reaches its control channel to
inject a fault and read the plant's true positions). One line and one browser per module:
each startup costs seconds on a slow machine."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, StorageState, expect, sync_playwright

from tests.components import find_tool, require_tool

STARTUP_S = 60.0
# A run's tests take the line at x200 (the smoke test in some 20 s); a test module may set its
# own TIME_SCALE: motion in maintenance is watched in wall time, so its line runs at x1.
TIME_SCALE = 200
DEBIAN_CHROMIUM = "/usr/bin/chromium"  # browsers cannot be downloaded here: Debian's
USERS = {"olga": ("operator", "olga-password"), "vera": ("viewer", "vera-password"),
         "mary": ("maintenance", "mary-password")}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "hmi"
PANEL = {"width": 1280, "height": 800}  # the line's panel PC
BROWSER_NICENESS = 10
# Headless and lean: no sandbox (containers lack the namespaces), no GPU, no background work.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--mute-audio"]
# A loaded 2-core machine runs the line, the service and Chromium at once: generous deadlines.
expect.set_options(timeout=30_000)


def until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait for a condition the page or the plant shows; failing, say what and how loaded the
    machine was."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} "
                                 f"(load average {os.getloadavg()[0]:.1f})")
        time.sleep(0.1)


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Line:
    url: str
    endpoints: dict[str, Any]
    logs: Path
    sessions: dict[str, StorageState] = field(default_factory=dict)  # user -> cookies

    def log_tail(self, lines: int = 25) -> str:
        """The last warnings and errors of povd serve and povd-sim (their JSON lines)."""
        parts = []
        for name in ("serve.log", "sim.log"):
            path = self.logs / name
            text = path.read_text(errors="replace") if path.exists() else ""
            notable = [line for line in text.splitlines()
                       if '"level": "warning"' in line or '"level": "error"' in line]
            parts.append(f"--- {name}, last {lines} warnings and errors:\n"
                         + "\n".join(notable[-lines:]))
        return "\n".join(parts)

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the simulator's control channel (a JSON line each way; blocking:
        Playwright's sync API holds this thread's event loop)."""
        where = self.endpoints["control"]
        with socket.create_connection((where["host"], int(where["port"])), timeout=5) as conn:
            conn.sendall(json.dumps(request).encode() + b"\n")
            with conn.makefile("rb") as answer:
                reply: dict[str, Any] = json.loads(answer.readline())
        assert reply.get("ok"), reply
        return reply

    def plant(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.control({"cmd": "plant"})["plant"]
        return snapshot


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed browser test shows what the controller and the simulator said meanwhile (a
    heartbeat loss, a device error): the page alone rarely tells why."""
    report: pytest.TestReport = yield
    line = getattr(item, "funcargs", {}).get("line")
    if report.when == "call" and report.failed and isinstance(line, Line):
        report.sections.append(("povd serve and povd-sim", line.log_tail()))
    return report


@pytest.fixture(autouse=True)
def _no_leaked_tasks() -> None:
    """The shared guard is an asyncio fixture, and Playwright's sync API runs its own event
    loop in this thread; these tests start no tasks of their own (the line runs in other
    processes), so there is nothing to guard."""


@pytest.fixture(scope="module")
def line(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """povd-sim, then `povd serve` connected to it, with an operator, a viewer and a
    maintainer made by `povd users add`; at the test module's TIME_SCALE (else x200)."""
    time_scale = getattr(request.module, "TIME_SCALE", TIME_SCALE)
    tmp = tmp_path_factory.mktemp("hmi")
    env = {**os.environ, "POVD_DATA_DIR": str(tmp / "data")}
    for name, (role, password) in USERS.items():
        subprocess.run([sys.executable, "-m", "controller.cli.main", "users", "add", name,
                        "--role", role, "--password-stdin"], input=password + "\n",
                       text=True, env=env, check=True, capture_output=True, timeout=60)
    endpoints, url_file = tmp / "endpoints.json", tmp / "url"
    sim = _start(["simulators.serve", "serve", "--time-scale", str(time_scale),
                  "--endpoints-json", str(endpoints)], env, tmp / "sim.log")
    serve = None
    try:
        _wait(lambda: endpoints.exists() or sim.poll() is not None, STARTUP_S, "povd-sim")
        assert sim.poll() is None, (tmp / "sim.log").read_text()[-3000:]
        time.sleep(0.2)  # the document is written whole, but give the writer its close
        serve = _start(["controller.cli.main", "serve", "--endpoints", str(endpoints),
                        "--http", "127.0.0.1:0", "--url-file", str(url_file)],
                       env, tmp / "serve.log")
        _wait(lambda: (url_file.exists() and url_file.read_text().startswith("http"))
              or serve.poll() is not None, STARTUP_S, "povd serve")
        assert serve.poll() is None, (tmp / "serve.log").read_text()[-3000:]
        yield Line(url_file.read_text().strip(), json.loads(endpoints.read_text()), tmp)
    finally:
        if serve is not None:
            _stop(serve)
        _stop(sim)


def _niced(chromium: str, folder: Path) -> str:
    """Chromium behind ``nice``: on a line PC the controller comes before the screen, and on a
    2-core test machine the browser's bursts (start-up, layout, charts) must not starve the
    controller's or the simulator's loops into a heartbeat loss the test did not ask for. Run
    as root, Chromium raises its own threads' priority (to -8): it is started without
    CAP_SYS_NICE, so the niceness holds."""
    nice = find_tool("nice")
    if nice is None:
        return chromium
    command = [nice, "-n", str(BROWSER_NICENESS), chromium]
    setpriv = find_tool("setpriv")
    if os.geteuid() == 0 and setpriv is not None:
        command = [setpriv, "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", *command]
    wrapper = folder / "chromium"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(command)} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    require_tool("chromium", package="chromium")
    chromium = DEBIAN_CHROMIUM if Path(DEBIAN_CHROMIUM).exists() else find_tool("chromium")
    assert chromium is not None
    executable = _niced(chromium, tmp_path_factory.mktemp("chromium"))
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def log_in(browser: Browser, line: Line, user: str, path: str = "/") -> Page:
    """A fresh browser context logged in as ``user``: through the log-in form the first time,
    then with that session's cookie (each log-in costs an argon2 check, seconds of CPU on a
    loaded 2-core machine)."""
    context = browser.new_context(viewport=PANEL, storage_state=line.sessions.get(user))
    page = context.new_page()
    page.goto(line.url + path)
    if user not in line.sessions:
        page.fill("#login-user", user)
        page.fill("#login-password", USERS[user][1])
        page.click("#login-submit")
    expect(page.locator("#user")).to_have_text(f"{user} ({USERS[user][0]})")
    expect(page.locator("#link")).to_contain_text("LIVE")
    line.sessions[user] = context.storage_state()
    return page


def screenshot(page: Page, name: str) -> None:
    """For docs/hmi.md: made by the tests, so they show the screens as they are."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
