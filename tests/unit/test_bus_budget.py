"""The bus budget: a line configuration whose poll plan would load a serial bus above its
budget is refused, naming the bus and the figure (domain.md, issue 12 item 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller.config.bus_budget import (
    bus_load,
    exchange_s,
    poll_exchanges,
    rtu_read,
)
from controller.config.line import LineConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _demo() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "line-sim.yaml").read_text())
    return data


def _with_bus(data: dict[str, Any], bus: str, **changes: Any) -> dict[str, Any]:
    data["buses"][bus] = {**data["buses"][bus], **changes}
    return data


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_line_fits_its_buses(path: Path) -> None:
    LineConfig.model_validate(yaml.safe_load(path.read_text()))


def test_the_gas_bus_at_19200_baud_is_refused_with_its_name_and_figure() -> None:
    data = _with_bus(_demo(), "gas_bus", baudrate=19200)
    with pytest.raises(ValidationError) as refused:
        LineConfig.model_validate(data)
    message = str(refused.value)
    assert "gas_bus: poll plan uses 72 % of 19200 baud, budget 70 %" in message
    assert "precursor_bus" not in message  # only the bus over budget is named


def test_a_larger_budget_takes_the_same_plan() -> None:
    data = _with_bus(_demo(), "gas_bus", baudrate=19200, budget_fraction=0.8)
    line = LineConfig.model_validate(data)
    assert bus_load("gas_bus", line.buses["gas_bus"], line.devices.values()) \
        == pytest.approx(0.72, abs=0.005)


def test_mfcs_at_5_hz_fit_a_19200_baud_gas_bus() -> None:
    data = _with_bus(_demo(), "gas_bus", baudrate=19200)
    for name in ("mfc_ar", "mfc_o2", "mfc_n2"):
        data["devices"][name] = {**data["devices"][name], "poll_hz": 5}
    line = LineConfig.model_validate(data)
    assert bus_load("gas_bus", line.buses["gas_bus"], line.devices.values()) \
        == pytest.approx(0.36, abs=0.005)


def test_a_faster_poll_on_an_rtu_bus_is_refused() -> None:
    data = _demo()
    data["devices"]["mfc_sicl4"] = {**data["devices"]["mfc_sicl4"], "poll_hz": 20}
    with pytest.raises(ValidationError, match=r"precursor_bus: poll plan uses 103 % of 19200"):
        LineConfig.model_validate(data)


def test_tcp_links_carry_no_budget() -> None:
    data = _demo()
    data["devices"]["safety_io"] = {**data["devices"]["safety_io"], "poll_hz": 1000}
    line = LineConfig.model_validate(data)
    assert bus_load("io_link", line.buses["io_link"], line.devices.values()) == 0.0


def test_frames_follow_the_drivers_reads() -> None:
    # A servo's read: 10 input registers; RTU adds unit, function, byte count and CRC.
    (servo,) = poll_exchanges("servo_axis", "modbus-rtu")
    assert (servo.request_bytes, servo.reply_bytes) == (8, 25)
    # The Modbus MFC reads twice: the readings block (11 registers), then the setpoint float.
    assert poll_exchanges("mfc", "modbus-rtu") == (rtu_read(11), rtu_read(2))
    # An Alicat poll `A<CR>` and its data frame, each character 10 bits, no RTU gap.
    (alicat,) = poll_exchanges("mfc", "alicat-ascii", unit="A", gas_label="Ar")
    assert alicat.request_bytes == 2
    assert exchange_s(alicat, 19200, "alicat-ascii") == pytest.approx(
        (alicat.request_bytes + alicat.reply_bytes) * 10 / 19200)
    # RTU frames end in 3.5 silent characters each.
    assert exchange_s(servo, 115200, "modbus-rtu") == pytest.approx((8 + 25 + 7) * 10 / 115200)
