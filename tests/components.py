"""The real components some tests need (mosquitto, mbpoll): installed by
``deploy/install-test-deps.sh``, which README's test command runs first. Missing, a test skips
with the reason on a developer's partial machine, and fails where ``CI`` is set: a green run
must not hide a component a new machine lacks."""

from __future__ import annotations

import os
import shutil

import pytest


def find_tool(name: str) -> str | None:
    # Debian puts the broker in /usr/sbin, which a non-root PATH may not include.
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def require_tool(*names: str, package: str) -> None:
    """Every named program present, or the test skips (fails under CI) saying what to install."""
    missing = [name for name in names if find_tool(name) is None]
    if not missing:
        return
    reason = (f"{', '.join(missing)} not installed (Debian: apt-get install {package}; "
              "or run bash deploy/install-test-deps.sh)")
    if os.environ.get("CI"):
        pytest.fail(reason + ": CI must run every test", pytrace=False)
    pytest.skip(reason)
