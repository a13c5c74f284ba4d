"""A missing real component skips a test on a developer's machine and fails it under CI."""

from __future__ import annotations

import pytest

from tests import components


def test_a_missing_program_skips_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(components, "find_tool", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="apt-get install mosquitto"):
        components.require_tool("mosquitto", package="mosquitto")


def test_under_ci_a_missing_program_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(components, "find_tool", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="CI must run every test"):
        components.require_tool("mbpoll", package="mbpoll")


def test_a_present_program_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(components, "find_tool", lambda name: f"/usr/bin/{name}")
    components.require_tool("mosquitto", "mosquitto_passwd", package="mosquitto")
