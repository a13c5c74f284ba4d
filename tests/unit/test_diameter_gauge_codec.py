"""The diameter gauge's ASCII frames, pinned."""

from __future__ import annotations

import pytest

from drivers.codecs import diameter_gauge_ascii as codec
from drivers.codecs.diameter_gauge_ascii import GaugeReading


def test_valid_measurement_frame() -> None:
    reading = GaugeReading(diameter_mm=30.0, valid=True)
    assert codec.encode_measurement(reading) == "D +0030.00 OK"
    assert codec.decode_measurement("D +0030.00 OK") == reading
    assert codec.encode_measurement(GaugeReading(48.27, True)) == "D +0048.27 OK"
    assert codec.decode_measurement("D +0119.99 OK") == GaugeReading(119.99, True)


def test_invalid_measurement_frame_carries_no_value() -> None:
    assert codec.encode_measurement(GaugeReading(None, False)) == "D +0000.00 ERR"
    assert codec.encode_measurement(GaugeReading(30.0, False)) == "D +0000.00 ERR"
    assert codec.decode_measurement("D +0000.00 ERR") == GaugeReading(None, False)


def test_values_round_to_hundredths() -> None:
    assert codec.format_value(30.004) == "+0030.00"
    assert codec.format_value(30.006) == "+0030.01"
    assert codec.format_value(-1.5) == "-0001.50"
    with pytest.raises(ValueError):
        codec.format_value(12345.0)


def test_identity_and_error_frames() -> None:
    assert codec.encode_identity("POVD-LM120,1.02") == "ID POVD-LM120,1.02"
    assert codec.decode_identity("ID POVD-LM120,1.02") == "POVD-LM120,1.02"
    assert codec.encode_error(codec.ERROR_UNKNOWN_COMMAND) == "ER,01"
    with pytest.raises(codec.GaugeRefusedError) as info:
        codec.decode_measurement("ER,02")
    assert info.value.code == 2


@pytest.mark.parametrize(
    "line",
    [
        "",
        "D 30.00 OK",
        "D +0030.0 OK",
        "D +0030.00",
        "D +0030.00 MAYBE",
        "d +0030.00 OK",
        "D +0030.00 OK extra",
        "ID POVD-LM120,1.02",
        "ER,1",
    ],
)
def test_malformed_measurement_frames_are_refused(line: str) -> None:
    with pytest.raises(codec.GaugeFrameError):
        codec.decode_measurement(line)


@pytest.mark.parametrize("line", ["", "ID", "ID ", "D +0030.00 OK", "IDPOVD"])
def test_malformed_identity_frames_are_refused(line: str) -> None:
    with pytest.raises(codec.GaugeFrameError):
        codec.decode_identity(line)
