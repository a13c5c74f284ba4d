"""The urgent link's setting on a bus: on by default on Modbus TCP, off when the line says the
device takes one connection, refused on a line with one master (domain.md rule 7's reaction
writes; drivers/transports/modbus.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller.config.line import LineConfig
from controller.machine.devices import build_machine

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _demo(**bus_changes: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "line-sim.yaml").read_text())
    for bus, changes in bus_changes.items():
        data["buses"][bus] = {**data["buses"][bus], **changes}
    return data


def test_on_for_modbus_tcp_by_default_and_never_on_serial_buses() -> None:
    line = LineConfig.model_validate(_demo())
    wanted = {name: bus.wants_urgent_link for name, bus in line.buses.items()}
    assert wanted == {name: bus.protocol == "modbus-tcp" for name, bus in line.buses.items()}
    assert wanted["rf_link"] and wanted["io_link"] and not wanted["drive_bus"]


def test_turned_off_for_a_device_that_takes_one_connection() -> None:
    line = LineConfig.model_validate(_demo(rf_link={"urgent_link": False}))
    assert not line.buses["rf_link"].wants_urgent_link
    assert line.buses["io_link"].wants_urgent_link
    machine = build_machine(line, None)
    assert not machine.transports["rf_link"].urgent_link_wanted  # type: ignore[union-attr]
    assert machine.transports["io_link"].urgent_link_wanted  # type: ignore[union-attr]


def test_asked_for_on_a_serial_bus_is_refused_with_the_bus_and_why() -> None:
    with pytest.raises(ValidationError) as refused:
        LineConfig.model_validate(_demo(drive_bus={"urgent_link": True}))
    message = str(refused.value)
    assert "drive_bus" in message
    assert "a modbus-rtu bus has one master" in message
