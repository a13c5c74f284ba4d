"""Alicat ASCII codec and simulator replies, pinned to the bytes on the wire."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config.line import load_line_config
from drivers.codecs import alicat_ascii as ac
from simulators.ascii_bus import AsciiBusServer
from simulators.faults import FaultBoard
from simulators.mfc import AlicatAsciiMfcSim
from simulators.plant import Plant

DOMAIN_FRAME = "A +014.70 +025.00 +000.00 +000.00 000.00 N2"


# -- driver side: requests -----------------------------------------------------------------
def test_request_lines_are_pinned() -> None:
    assert ac.poll("A") == "A"
    assert ac.set_setpoint("A", 5) == "AS5.00"
    assert ac.set_setpoint("B", 80.125) == "BS80.12"
    assert ac.select_gas("C", 8) == "C$$W46=8"
    assert ac.read_register("A", 122) == "A$$R122"
    assert ac.query_setpoint("A") == "ALS"
    assert ac.hold_closed("A") == "AHC"
    assert ac.cancel_hold("A") == "AC"


@pytest.mark.parametrize("unit", ["", "a", "AB", "1", "@"])
def test_bad_unit_ids_are_refused(unit: str) -> None:
    with pytest.raises(ValueError):
        ac.poll(unit)


# -- driver side: replies ------------------------------------------------------------------
def test_domain_frame_formats_and_parses() -> None:
    frame = ac.DataFrame("A", 14.7, 25.0, 0.0, 0.0, 0.0, "N2")
    assert ac.format_data_frame(frame) == DOMAIN_FRAME
    assert ac.parse_data_frame(DOMAIN_FRAME) == frame


def test_status_words_follow_the_gas_in_a_fixed_order() -> None:
    frame = ac.DataFrame("B", 87.21, 25.0, 1.2, 7.5, 7.5, "O2", frozenset({"MOV", "HLD", "LCK"}))
    line = ac.format_data_frame(frame)
    assert line == "B +087.21 +025.00 +001.20 +007.50 007.50 O2 HLD LCK MOV"
    assert ac.parse_data_frame(line).status == {"HLD", "LCK", "MOV"}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "A +014.70 +025.00 +000.00 +000.00 000.00",  # no gas
        "a +014.70 +025.00 +000.00 +000.00 000.00 N2",  # unit must be upper case
        "A +014.70 +025.00 +0x0.00 +000.00 000.00 N2",
        "A +014.70 +025.00 +000.00 +000.00 000.00 +000.00 N2",  # totalizer column: unknown
        "A +014.70 +025.00 +000.00 +000.00 000.00 N2 XYZ",
        "\x01\x02",
    ],
)
def test_malformed_frames_are_refused(line: str) -> None:
    with pytest.raises(ac.AsciiFormatError):
        ac.parse_data_frame(line)


@given(
    values=st.lists(
        st.floats(min_value=-999.99, max_value=999.99, allow_nan=False), min_size=4, max_size=4
    ),
    setpoint=st.floats(min_value=0, max_value=999.99),
    unit=st.sampled_from(ac.UNIT_IDS),
    gas=st.sampled_from(sorted(ac.GAS_LABELS.values())),
    status=st.frozensets(st.sampled_from(ac.STATUS_ORDER)),
)
def test_frames_round_trip_to_the_shown_resolution(
    values: list[float], setpoint: float, unit: str, gas: str, status: frozenset[str]
) -> None:
    pressure, temperature, volumetric, mass = values
    frame = ac.DataFrame(unit, pressure, temperature, volumetric, mass, setpoint, gas, status)
    parsed = ac.parse_data_frame(ac.format_data_frame(frame))
    assert (parsed.unit, parsed.gas, parsed.status) == (unit, gas, status)
    shown = (parsed.pressure_psia, parsed.temperature_c, parsed.volumetric_slpm, parsed.mass_slpm)
    for got, sent in zip(shown, values, strict=True):
        assert got == pytest.approx(sent, abs=0.0051)
    assert parsed.setpoint_slpm == pytest.approx(setpoint, abs=0.0051)


def test_register_and_setpoint_replies() -> None:
    assert ac.format_register_reply("A", 46, 8) == "A   046 = 8"
    assert ac.parse_register_reply("A   046 = 8") == ("A", 46, 8)
    assert ac.parse_register_reply("A   122 = 37") == ("A", 122, 37)
    reply = ac.SetpointReply("A", 5.0, 5.0, ac.SLPM_UNIT_CODE, ac.SLPM_UNIT_LABEL)
    assert ac.format_setpoint_reply(reply) == "A +005.00 +005.00 7 SLPM"
    assert ac.parse_setpoint_reply("A +078.95 +078.88 12 SCCM").requested_slpm == 78.88
    with pytest.raises(ac.AsciiFormatError):
        ac.parse_register_reply("A +005.00 +005.00 7 SLPM")
    with pytest.raises(ac.AsciiFormatError):
        ac.parse_setpoint_reply("A   046 = 8")


def test_rejections() -> None:
    assert ac.is_rejection("?")
    assert ac.is_rejection("A ?")
    assert not ac.is_rejection(DOMAIN_FRAME)
    assert not ac.is_rejection("")


# -- simulator side: requests ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("A", ac.Request("A", ac.Command.POLL)),
        ("a", ac.Request("A", ac.Command.POLL)),
        ("AS5.00", ac.Request("A", ac.Command.SETPOINT, value=5.0)),
        ("as 5", ac.Request("A", ac.Command.SETPOINT, value=5.0)),
        ("AS.5", ac.Request("A", ac.Command.SETPOINT, value=0.5)),
        ("A32000", ac.Request("A", ac.Command.SETPOINT, value=0.5, integer_setpoint=True)),
        ("ALS", ac.Request("A", ac.Command.QUERY_SETPOINT)),
        ("ALS 7.5", ac.Request("A", ac.Command.SET_SETPOINT_LS, value=7.5)),
        ("AG8", ac.Request("A", ac.Command.SELECT_GAS, register_value=8)),
        ("AG 8", ac.Request("A", ac.Command.SELECT_GAS, register_value=8)),
        ("A$$R46", ac.Request("A", ac.Command.READ_REGISTER, register=46)),
        ("AR122", ac.Request("A", ac.Command.READ_REGISTER, register=122)),
        ("A$$W46=11", ac.Request("A", ac.Command.WRITE_REGISTER, register=46, register_value=11)),
        ("AW122=37", ac.Request("A", ac.Command.WRITE_REGISTER, register=122, register_value=37)),
        ("AHC", ac.Request("A", ac.Command.HOLD_CLOSED)),
        ("A$$H", ac.Request("A", ac.Command.HOLD_CURRENT)),
        ("AC", ac.Request("A", ac.Command.CANCEL_HOLD)),
        ("A$$C", ac.Request("A", ac.Command.CANCEL_HOLD)),
        ("A$$L", ac.Request("A", ac.Command.LOCK)),
        ("AV", ac.Request("A", ac.Command.TARE)),
        ("AX", None),
        ("AS", None),
        ("ASR", None),
        ("AGM mix 236 50 1 50 8", None),
        ("@@", None),
    ],
)
def test_requests_parse(line: str, expected: ac.Request | None) -> None:
    assert ac.parse_request(line) == expected


def test_gas_labels() -> None:
    assert ac.gas_label(8) == "N2"
    assert ac.gas_label(255, (255, "SiCl4")) == "SiCl4"
    assert ac.gas_label(254) == "G254"


# -- simulator replies, pinned as bytes on the bus -------------------------------------------
@pytest.fixture
def bus() -> AsciiBusServer:
    line = load_line_config()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    devices = [
        AlicatAsciiMfcSim(name, line.mfc(name), plant, faults)
        for name in ("mfc_ar", "mfc_o2", "mfc_n2")
    ]
    return AsciiBusServer("gas_bus", list(devices), faults)


# Pressure is the configured supply (5 bar g) in psia; temperature the plant's ambient.
@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (b"A", b"A +087.21 +025.00 +000.00 +000.00 000.00 Ar\r"),
        (b"C", b"C +087.21 +025.00 +000.00 +000.00 000.00 N2\r"),
        (b"BS80.00", b"B +087.21 +025.00 +000.00 +000.00 080.00 O2\r"),
        (b"CS999", b"C +087.21 +025.00 +000.00 +000.00 100.00 N2\r"),  # clamped to FS
        (b"A$$W46=8", b"A   046 = 8\r"),
        (b"A$$R46", b"A   046 = 1\r"),
        (b"AR122", b"A   122 = 37\r"),
        (b"AG11", b"A 11 O2\r"),
        (b"ALS", b"A +000.00 +000.00 7 SLPM\r"),
        (b"AHC", b"A +087.21 +025.00 +000.00 +000.00 000.00 Ar HLD\r"),
        (b"AX", b"?\r"),
        (b"A$$R999", b"?\r"),
        (b"D", None),  # nobody is unit D: silence
    ],
)
def test_simulator_replies_are_pinned(
    bus: AsciiBusServer, request_bytes: bytes, reply: bytes | None
) -> None:
    assert bus.answer(request_bytes) == reply


def test_gas_change_reads_back_through_register_46(bus: AsciiBusServer) -> None:
    assert bus.answer(b"B$$W46=8") == b"B   046 = 8\r"
    assert bus.answer(b"B$$R46") == b"B   046 = 8\r"
    assert bus.answer(b"B").endswith(b" N2\r")  # type: ignore[union-attr]


def test_setpoint_query_after_setpoint(bus: AsciiBusServer) -> None:
    bus.answer(b"AS12.5")
    assert bus.answer(b"ALS") == b"A +012.50 +012.50 7 SLPM\r"
    assert bus.answer(b"ALS 7.5") == b"A +007.50 +007.50 7 SLPM\r"


# The single pattern (parse_data_frame) and the field-by-field parse must agree on every
# line: same frame, or both refuse.
def _parsed(parse: Callable[[str], ac.DataFrame], line: str) -> object:
    try:
        return parse(line)
    except ac.AsciiFormatError:
        return ac.AsciiFormatError


_FRAME_TOKENS = st.sampled_from([
    "A", "B", "a", " ", "  ", "\t", "+014.70", "-1.5", "000.00", ".5", "5.", "+", "1e5", "٣",
    "9" * 25, "9" * 400, "N2", "Ar", "SiCl4", "G240", "?", "12", "-3", "HLD", "LCK", "MOV",
    "XYZ", "\n", "\x00",
])  # fmt: skip


@given(st.one_of(
    st.lists(_FRAME_TOKENS, max_size=12).map(" ".join),
    st.lists(_FRAME_TOKENS, max_size=12).map("".join),
    st.text(max_size=60),
))
def test_the_single_pattern_agrees_with_the_field_by_field_parse(line: str) -> None:
    assert _parsed(ac.parse_data_frame, line) == _parsed(ac.parse_data_frame_by_fields, line)


@pytest.mark.parametrize("line", [
    DOMAIN_FRAME,
    "B +087.21 +025.00 +001.20 +007.50 007.50 O2 HLD LCK MOV",
    "Z -0.5 .5 5. 12 +3 SiCl4",
])
def test_the_frames_our_devices_send_take_the_single_pattern(line: str) -> None:
    # Guards the fast path itself: were the pattern never to match, every poll would pay
    # the field-by-field parse and the tests above would still pass.
    assert ac._DATA_FRAME.fullmatch(line) is not None
    assert ac.parse_data_frame(line) == ac.parse_data_frame_by_fields(line)
