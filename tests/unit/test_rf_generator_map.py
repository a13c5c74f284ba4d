"""The RF generator's register map: pure encode / decode, pinned to docs/devices.md."""

from __future__ import annotations

import pytest

from drivers.codecs import rf_generator_map as rf_map
from drivers.codecs.rf_generator_map import RfStatus


def _status(**overrides: object) -> RfStatus:
    values: dict[str, object] = {
        "forward_kw": 0.0,
        "reflected_kw": 0.0,
        "setpoint_kw": 0.0,
        "ready": False,
        "rf_on": False,
        "plasma_lit": False,
        "interlock_open": False,
        "fault": False,
        "fault_code": 0,
        "ramping": False,
    }
    values.update(overrides)
    return RfStatus(**values)  # type: ignore[arg-type]


def test_documented_addresses() -> None:
    assert (rf_map.HR_RF_COMMAND, rf_map.HR_POWER_SETPOINT) == (0, 1)
    assert (rf_map.HR_RAMP_RATE, rf_map.HR_FAULT_RESET) == (2, 3)
    assert (rf_map.IR_STATUS, rf_map.IR_FAULT_CODE, rf_map.IR_FORWARD_POWER) == (0, 1, 2)
    assert (rf_map.IR_REFLECTED_POWER, rf_map.IR_SETPOINT_ACTUAL, rf_map.IR_FREQUENCY) == (3, 4, 5)


@pytest.mark.parametrize(
    ("kw", "word"), [(0.0, 0), (12.0, 120), (50.0, 500), (80.0, 800), (0.14, 1), (6553.5, 65535)]
)
def test_power_is_kw_times_ten(kw: float, word: int) -> None:
    assert rf_map.encode_power_kw(kw) == word
    assert rf_map.decode_power_kw(word) == pytest.approx(word / 10)


@pytest.mark.parametrize("kw", [-0.1, 6553.6])
def test_power_outside_the_register_is_refused(kw: float) -> None:
    with pytest.raises(ValueError):
        rf_map.encode_power_kw(kw)


def test_ramp_and_frequency_scales() -> None:
    assert rf_map.encode_ramp_kw_s(5.0) == 50
    assert rf_map.decode_ramp_kw_s(25) == pytest.approx(2.5)
    assert rf_map.encode_frequency_mhz(3.0) == 3000
    assert rf_map.decode_frequency_mhz(2712) == pytest.approx(2.712)
    assert rf_map.MIN_RAMP_KW_S == 0.1


@pytest.mark.parametrize(
    ("field", "bit"),
    [
        ("ready", 0),
        ("rf_on", 1),
        ("plasma_lit", 2),
        ("interlock_open", 3),
        ("fault", 4),
        ("ramping", 5),
    ],
)
def test_each_status_bit(field: str, bit: int) -> None:
    assert rf_map.encode_status_word(_status(**{field: True})) == 1 << bit
    words = [1 << bit, 0, 0, 0, 0, 0]
    decoded = rf_map.decode_status(words)
    assert getattr(decoded, field) is True
    assert sum(getattr(decoded, f) is True for f in ("ready", "rf_on", "plasma_lit",
               "interlock_open", "fault", "ramping")) == 1


def test_input_block_round_trip() -> None:
    status = _status(
        forward_kw=49.3, reflected_kw=1.0, setpoint_kw=50.0, ready=True, rf_on=True,
        plasma_lit=True, ramping=True,
    )
    words = rf_map.encode_inputs(status, frequency_mhz=3.0)
    assert words == [0b100111, 0, 493, 10, 500, 3000]
    assert rf_map.decode_status(words) == status


def test_fault_code_travels_in_its_own_register() -> None:
    words = rf_map.encode_inputs(_status(fault=True, fault_code=7), frequency_mhz=2.0)
    assert words[rf_map.IR_STATUS] == 1 << rf_map.BIT_FAULT
    assert words[rf_map.IR_FAULT_CODE] == 7
    assert rf_map.decode_status(words).fault_code == 7


def test_short_block_is_refused() -> None:
    with pytest.raises(ValueError):
        rf_map.decode_status([0, 0, 0])
