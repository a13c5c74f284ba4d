"""The maintenance page in Chromium: what would refuse a jog is shown before one is tried, and
hold-to-jog moves the carriage only while the button is held (its position read from the
simulated plant, not from the page): released, or the page closed mid-jog, the axis stops.

The line runs in real time (x1): a jog's speed is wall-clock speed, and at x200 the carriage
would cross its whole travel between two looks."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Browser, expect

from controller.config.line import load_line_config
from tests.browser.conftest import Line, log_in, screenshot, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # the first test starts the line

TIME_SCALE = 1
LEASE_S = load_line_config().supervision.jog_lease_s  # povd serve runs the default line


def carriage_mm(line: Line) -> float:
    return float(line.plant()["carriage_mm"])


def still(line: Line) -> bool:
    """The carriage has not moved over a few simulator ticks."""
    before = carriage_mm(line)
    time.sleep(0.3)
    return abs(carriage_mm(line) - before) < 0.01


def test_hold_to_jog_on_the_maintenance_page(browser: Browser, line: Line) -> None:
    page = log_in(browser, line, "mary", "/maintenance")
    jog = page.locator("button.jog[data-axis=carriage][data-direction='+']")
    why = page.locator("#maintenance-why")
    expect(jog).to_be_disabled()
    expect(why).to_contain_text("maintenance mode")
    page.click("#mode-toggle")
    expect(page.locator("#mode")).to_have_text("maintenance")
    expect(jog).to_be_enabled()

    # What would refuse a jog is on the page before anyone tries one.
    relay_open = {"device": "safety_io", "kind": "safety_relay_open"}
    line.control({"cmd": "fault", **relay_open})
    try:
        expect(jog).to_be_disabled()
        expect(why).to_contain_text("the safety relay is open")
    finally:
        line.control({"cmd": "clear", **relay_open})
    expect(jog).to_be_enabled()
    expect(why).to_have_text("")

    start = carriage_mm(line)
    jog.hover()
    page.mouse.down()
    until(lambda: carriage_mm(line) > start + 5, "the carriage to move while held")
    expect(page.locator("#vel-carriage")).not_to_have_text("stopped")  # the page follows
    screenshot(page, "maintenance")
    page.mouse.up()
    until(lambda: still(line), "the carriage to stop on release", 10)
    stopped = carriage_mm(line)
    time.sleep(2 * LEASE_S)  # past a lease: nothing renews the jog, nothing restarts it
    assert abs(carriage_mm(line) - stopped) < 0.01

    # Closing the page mid-jog: its renewals end with it, the axis stops.
    jog.hover()
    page.mouse.down()
    until(lambda: carriage_mm(line) > stopped + 5, "the carriage to move again")
    page.close()
    until(lambda: still(line), "the carriage to stop once the page is closed", 10)

    page = log_in(browser, line, "mary", "/maintenance")
    page.click("#mode-toggle")
    expect(page.locator("#mode")).to_have_text("production")
    page.context.close()
