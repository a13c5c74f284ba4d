"""The servo drives' register map: scaling, int32 word order and sign, status and control bits."""

from __future__ import annotations

import pytest

from drivers.codecs import servo_map
from drivers.codecs.servo_map import AxisMode, AxisStatus, Control, Oscillation, Status


def test_position_is_int32_thousandths_high_word_first() -> None:
    assert servo_map.encode_position(1200.0) == [0x0012, 0x4F80]  # 1,200,000
    assert servo_map.decode_position([0x0012, 0x4F80]) == 1200.0
    assert servo_map.encode_position(0.001) == [0x0000, 0x0001]


def test_negative_values_are_twos_complement_across_both_words() -> None:
    assert servo_map.encode_position(-0.001) == [0xFFFF, 0xFFFF]
    assert servo_map.encode_position(-100.0) == [0xFFFE, 0x7960]  # -100,000
    assert servo_map.decode_position([0xFFFE, 0x7960]) == -100.0
    assert servo_map.encode_velocity(-30.0) == [0xFFFF, 0xF448]  # -3,000 (0.01 rpm)
    assert servo_map.decode_velocity([0xFFFF, 0xF448]) == -30.0


def test_velocity_and_acceleration_scales() -> None:
    assert servo_map.encode_velocity(3000.0) == [0x0004, 0x93E0]  # 300,000 (0.01 mm/min)
    assert servo_map.encode_acceleration(500.0) == [0x0000, 0xC350]  # 50,000 (0.01 mm/s^2)
    assert servo_map.decode_acceleration([0x0000, 0xC350]) == 500.0
    assert servo_map.encode_speed(600.0) == [0x0000, 0xEA60]


def test_unsigned_values_refuse_negatives_and_overflow() -> None:
    with pytest.raises(ValueError):
        servo_map.encode_acceleration(-1.0)
    with pytest.raises(ValueError):
        servo_map.encode_speed(-5.0)
    with pytest.raises(ValueError):
        servo_map.encode_position(3_000_000.0)  # 3e9 counts: beyond int32


def test_motion_block_is_hr1_to_hr7() -> None:
    block = servo_map.encode_motion_block(AxisMode.POSITION_ABSOLUTE, 600.0, 1500.0, 250.0)
    assert block == [2, 0x0009, 0x27C0, 0x0002, 0x49F0, 0x0000, 0x61A8]
    assert len(block) == servo_map.MOTION_BLOCK_COUNT
    assert servo_map.HR_MODE + len(block) == servo_map.HR_JOG_SPEED


def test_control_bits_are_pinned() -> None:
    assert int(Control.ENABLE) == 0x01
    assert int(Control.ENABLE | Control.START) == 0x03
    assert int(Control.ENABLE | Control.STOP) == 0x05
    assert int(Control.ENABLE | Control.HOME) == 0x09
    assert int(Control.ENABLE | Control.RESET_ALARM) == 0x11
    assert int(Control.ENABLE | Control.JOG_POSITIVE) == 0x21
    assert int(Control.ENABLE | Control.JOG_NEGATIVE) == 0x41
    assert int(Control.ENABLE | Control.OSCILLATE) == 0x81
    assert int(servo_map.CONTROL_MASK) == 0xFF


def _status(**overrides: object) -> AxisStatus:
    base: dict[str, object] = {
        "enabled": False,
        "moving": False,
        "in_position": False,
        "homed": False,
        "limit_positive": False,
        "limit_negative": False,
        "alarm": False,
        "alarm_code": 0,
        "position_mm": 0.0,
        "velocity": 0.0,
        "mode": AxisMode.NONE,
        "powered": True,
        "following_error_mm": 0.0,
        "load_percent": 0.0,
    }
    base.update(overrides)
    return AxisStatus(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "bit"),
    [
        ("enabled", Status.ENABLED),
        ("moving", Status.MOVING),
        ("in_position", Status.IN_POSITION),
        ("homed", Status.HOMED),
        ("limit_positive", Status.LIMIT_POSITIVE),
        ("limit_negative", Status.LIMIT_NEGATIVE),
        ("alarm", Status.ALARM),
    ],
)
def test_each_status_bit_decodes_to_its_field(field: str, bit: Status) -> None:
    words = [0] * servo_map.INPUT_COUNT
    words[servo_map.IR_STATUS] = int(bit)
    status = servo_map.decode_inputs(words)
    flags = {
        "enabled": status.enabled,
        "moving": status.moving,
        "in_position": status.in_position,
        "homed": status.homed,
        "limit_positive": status.limit_positive,
        "limit_negative": status.limit_negative,
        "alarm": status.alarm,
    }
    assert [name for name, on in flags.items() if on] == [field]
    assert not status.powered


def test_input_image_is_pinned_and_round_trips() -> None:
    status = _status(
        enabled=True,
        moving=True,
        homed=True,
        position_mm=-12.345,
        velocity=-250.5,
        mode=AxisMode.JOG,
        alarm_code=0,
        following_error_mm=-0.02,
        load_percent=12.5,
    )
    words = servo_map.encode_inputs(status)
    assert words == [
        0b1000_1011,  # powered, homed, moving, enabled
        0,
        0xFFFF, 0xCFC7,  # -12,345
        0xFFFF, 0x9E26,  # -25,050
        0xFFFE,  # -2 (0.01 mm)
        125,
        5,
        0,  # no strokes
    ]  # fmt: skip
    assert servo_map.decode_inputs(words) == status


def test_alarm_code_and_bit() -> None:
    status = _status(alarm=True, alarm_code=int(servo_map.AlarmCode.OVERLOAD))
    words = servo_map.encode_inputs(status)
    assert words[servo_map.IR_STATUS] == int(Status.ALARM | Status.POWERED)
    assert words[servo_map.IR_ALARM_CODE] == 4


def test_following_error_saturates() -> None:
    assert servo_map.encode_following_error(1000.0) == 0x7FFF
    assert servo_map.decode_following_error(servo_map.encode_following_error(-1000.0)) == -327.68


def test_decode_refuses_unknown_mode_and_wrong_length() -> None:
    words = [0] * servo_map.INPUT_COUNT
    words[servo_map.IR_ACTIVE_MODE] = 9
    with pytest.raises(ValueError, match="mode"):
        servo_map.decode_inputs(words)
    with pytest.raises(ValueError, match="input registers"):
        servo_map.decode_inputs([0] * 3)


def test_watchdog_registers_are_pinned() -> None:
    assert (servo_map.HR_JOG_SPEED, servo_map.HR_COMM_WATCHDOG) == (8, 10)
    assert servo_map.HR_WATCHDOG_VELOCITY == 11
    assert servo_map.WATCHDOG_BLOCK_COUNT == 3
    assert int(servo_map.AlarmCode.COMM_WATCHDOG) == 7


def test_watchdog_block_is_ms_then_int32_velocity_high_word_first() -> None:
    # 1.0 s = 1000 ms = 0x03E8; 10 rpm = 1,000 x 0.01 rpm = 0x0000 0x03E8.
    assert servo_map.encode_watchdog_block(1.0, 10.0) == [0x03E8, 0x0000, 0x03E8]
    assert servo_map.encode_watchdog_block(0.25, -10.0) == [0x00FA, 0xFFFF, 0xFC18]
    assert servo_map.encode_watchdog_block(0.0, 0.0) == [0, 0, 0]  # off
    assert servo_map.decode_watchdog_block([0x03E8, 0x0000, 0x03E8]) == (1.0, 10.0)


@pytest.mark.parametrize("timeout_s", [-0.001, 65.536, 0.0004])
def test_watchdog_timeout_must_fit_the_register(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="watchdog"):
        servo_map.encode_comm_watchdog_ms(timeout_s)


def test_watchdog_timeout_extremes() -> None:
    assert servo_map.encode_comm_watchdog_ms(0.001) == 1
    assert servo_map.encode_comm_watchdog_ms(65.535) == 0xFFFF
    assert servo_map.decode_comm_watchdog_s(0xFFFF) == servo_map.MAX_COMM_WATCHDOG_S == 65.535


# -- drive-side oscillation (HR 13-21, control bit 7, status bit 8, IR 9) ---------------------
def test_oscillation_registers_are_pinned() -> None:
    assert servo_map.HR_OSC_FIRST == 13
    assert servo_map.HR_OSC_SECOND == 15
    assert servo_map.HR_OSC_SPEED == 17
    assert servo_map.HR_OSC_ACCELERATION == 19
    assert servo_map.HR_OSC_STROKES == 21
    assert servo_map.HOLDING_COUNT == 22
    assert servo_map.OSCILLATION_BLOCK_COUNT == 9
    assert servo_map.IR_STROKES_DONE == 9
    assert servo_map.INPUT_COUNT == 10
    assert int(Status.OSCILLATING) == 0x100
    assert int(AxisMode.OSCILLATE) == 6


def test_oscillation_block_is_pinned_and_round_trips() -> None:
    oscillation = Oscillation(
        first_mm=300.0, second_mm=900.0, speed=150.0, acceleration=0.0, strokes=20
    )
    block = servo_map.encode_oscillation_block(oscillation)
    assert block == [
        0x0004, 0x93E0,  # 300,000 (0.001 mm)
        0x000D, 0xBBA0,  # 900,000
        0x0000, 0x3A98,  # 15,000 (0.01 mm/min)
        0x0000, 0x0000,  # 0: the axis maximum
        0x0014,  # 20 strokes
    ]  # fmt: skip
    assert servo_map.decode_oscillation_block(block) == oscillation
    assert servo_map.HR_OSC_FIRST + len(block) == servo_map.HOLDING_COUNT


def test_oscillation_block_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="stroke"):
        servo_map.encode_oscillation_block(Oscillation(0.0, 1.0, 1.0, 0.0, 0x10000))
    with pytest.raises(ValueError):
        servo_map.encode_oscillation_block(Oscillation(0.0, 1.0, -1.0, 0.0, 1))
    with pytest.raises(ValueError, match="registers"):
        servo_map.decode_oscillation_block([0] * 8)


def test_oscillating_status_and_stroke_counter_are_pinned() -> None:
    status = _status(
        enabled=True, moving=True, homed=True, position_mm=600.0, velocity=-150.0,
        mode=AxisMode.OSCILLATE, oscillating=True, strokes_done=7,
    )
    words = servo_map.encode_inputs(status)
    assert words[servo_map.IR_STATUS] == 0x018B  # oscillating, powered, homed, moving, enabled
    assert words[servo_map.IR_ACTIVE_MODE] == 6
    assert words[servo_map.IR_STROKES_DONE] == 7
    assert servo_map.decode_inputs(words) == status
    # Reserved bits 9-15 are ignored; the counter saturates rather than wraps.
    words[servo_map.IR_STATUS] |= 0xFE00
    assert servo_map.decode_inputs(words) == status
    assert servo_map.encode_inputs(_status(strokes_done=70_000))[9] == 0xFFFF
