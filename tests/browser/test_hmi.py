"""The operator HMI in Chromium against `povd serve` on the simulated line (x200): a run started
from the browser and watched, hold and unhold, a viewer's disabled commands, a fault's first-out
alarm acknowledged, and the finished run's report and CSV. The tests share one line and run in
order (the report is the first test's run)."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import Line, log_in, screenshot, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # the first test starts the line

RUN_S = 90.0  # the smoke test is some 20 s of wall time at x200; generous for a loaded machine


def all_healthy(page: Page, timeout_s: float = 60.0) -> None:
    """Every link up, no interlock tripped and the PLC's heartbeat not latched, as the
    interlock panel shows them (the service refuses a start until then); failing, say which."""
    expect(page.locator("#interlocks li")).not_to_have_count(0)
    bad = page.locator("#interlocks li.bad")
    try:
        expect(bad).to_have_count(0, timeout=timeout_s * 1000)
    except AssertionError:
        raise AssertionError(f"not healthy after {timeout_s:g} s: {bad.all_inner_texts()} "
                             f"(load average {os.getloadavg()[0]:.1f})") from None


UNEXPECTED = ("Aborting", "Aborted", "Stopping", "Stopped", "Suspending", "Suspended")


def running(page: Page) -> bool:
    """True while the run goes on; a run that went wrong fails the test at once, saying how
    (rather than a wait for a pass that will not come)."""
    state = page.inner_text("#state")
    if state in UNEXPECTED:
        alarms = page.locator("#alarms li").all_inner_texts()
        raise AssertionError(f"the run went to {state}: {alarms} (making safe: "
                             f"{page.inner_text('#making-safe')!r}; load average "
                             f"{os.getloadavg()[0]:.1f})")
    return True


def number(page: Page, selector: str) -> int:
    text = page.inner_text(selector)
    return int(text) if text.isdigit() else -1


def points(page: Page, trend: str) -> int:
    return int(page.get_attribute(f"#trend-{trend}", "data-points") or 0)


def test_a_run_from_the_browser(browser: Browser, line: Line) -> None:
    page = log_in(browser, line, "olga")
    expect(page.locator("#state")).to_have_text("Idle")
    all_healthy(page)
    page.click("#cmd-start")
    page.select_option("#start-recipe", "smoke-test.yaml")
    expect(page.locator("#start-forecast")).to_contain_text("9 passes in 3 layers")
    page.fill("#start-serial", "P-HMI-1")
    page.fill("#start-bait-lot", "BR-7")
    page.click("#start-confirm")
    expect(page.locator("#message")).to_have_text("run started")  # else: the refusal
    expect(page.locator("#recipe")).to_have_text("smoke-test", timeout=30_000)
    expect(page.locator("#serial")).to_have_text("P-HMI-1")
    expect(page.locator("#passes-total")).to_have_text("9")

    until(lambda: running(page) and number(page, "#passes-done") >= 1, "the first pass", RUN_S)
    first, trend = number(page, "#passes-done"), points(page, "power")
    until(lambda: running(page) and number(page, "#passes-done") > first,
          "the pass counter to move", RUN_S)
    until(lambda: points(page, "power") > trend, "the power trend to grow")
    expect(page.locator("#state")).to_have_text("Execute")
    screenshot(page, "main-mid-run")

    page.click("#cmd-hold")
    expect(page.locator("#state")).to_have_text("Held", timeout=30_000)
    expect(page.locator("#cmd-hold")).to_be_disabled()
    expect(page.locator("[data-why=hold]")).to_contain_text("hold is not allowed in Held")
    page.click("#cmd-unhold")
    expect(page.locator("#state")).to_have_text("Execute", timeout=30_000)
    expect(page.locator("#state")).to_have_text("Complete", timeout=RUN_S * 1000)
    page.click("#cmd-reset")
    expect(page.locator("#state")).to_have_text("Idle", timeout=30_000)
    page.context.close()


def test_a_viewer_sees_every_command_disabled_with_the_reason(browser: Browser,
                                                              line: Line) -> None:
    page = log_in(browser, line, "vera")
    expect(page.locator("#state")).not_to_have_text("—")
    for command in ("start", "hold", "unhold", "stop", "abort", "reset", "clear"):
        expect(page.locator(f"#cmd-{command}")).to_be_disabled()
        expect(page.locator(f"[data-why={command}]")).to_contain_text(
            f"role viewer may not {command}")
    expect(page.locator("#cmd-trim")).to_be_disabled()
    page.context.close()


def test_an_interlock_fault_shows_its_first_out_alarm(browser: Browser, line: Line) -> None:
    page = log_in(browser, line, "olga")
    until(lambda: points(page, "power") >= 5, "the trends to fill (for the screenshot)")
    fault = {"device": "safety_io", "kind": "water_flow_low"}
    line.control({"cmd": "fault", **fault})
    try:
        lock = page.locator("[data-interlock=water_flow_low]")
        expect(lock).to_contain_text("TRIPPED")
        expect(lock).to_contain_text("FIRST OUT")
        alarm = page.locator("[data-alarm=water_flow_low]")
        expect(alarm).to_contain_text("FIRST OUT")
        expect(alarm).to_contain_text("cooling water flow low")
        screenshot(page, "interlocks-first-out")
        alarm.locator("button.ack").click()
        expect(alarm.locator("button.ack")).to_be_disabled()
        expect(alarm).to_contain_text("ack active")
    finally:
        line.control({"cmd": "clear", **fault})
    # The water is back: the input shows it, and the trip stays latched and marked first-out
    # until an explicit, recorded clear (domain rule 1).
    expect(lock).to_contain_text("returned")
    expect(lock).to_contain_text("FIRST OUT")
    expect(alarm).to_contain_text("FIRST OUT")
    page.context.close()


def test_a_finished_runs_report_and_csv(browser: Browser, line: Line) -> None:
    page = log_in(browser, line, "olga")
    run = page.locator("#runs li").first
    expect(run).to_contain_text("P-HMI-1")
    with page.context.expect_page() as opened:
        run.locator("a.report").click()
    report = opened.value
    report.wait_for_load_state()
    expect(report.locator("body")).to_contain_text("smoke-test")
    screenshot(report, "report")
    href = run.locator("a.csv").first.get_attribute("href")
    assert href is not None
    reply = page.request.get(line.url + href)
    assert reply.ok, reply.status
    assert reply.headers["content-type"].startswith("text/csv")
    assert reply.text().count("\n") > 1
    page.context.close()
