"""Fixtures shared by the integration tests."""

from __future__ import annotations

# Re-exported so every integration test can ask for a real broker by fixture name.
from tests.integration.mosquitto_fixture import mosquitto, persistent_mosquitto

__all__ = ["mosquitto", "persistent_mosquitto"]
