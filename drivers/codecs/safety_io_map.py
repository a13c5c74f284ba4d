"""The safety PLC's register map (docs/devices.md, "Safety PLC / I/O"): pure encode / decode.

Inputs are input registers: one bit-packed digital word, then one register per analog value
with a fixed scale (signed where the value can be negative: water temperature, exhaust draft).
Outputs are one bit-packed holding register, written whole; a command register resets the PLC's
latched heartbeat loss. The heartbeat is one write of two registers, the controller's owner id
and a counter it keeps changing: the PLC hands the line to one owner and counts only its beats
(one controller per line, domain.md rule 8, enforced at the machine). The input block ends with
the outputs word the PLC actually drives (after its hard-wired logic), in the same bit layout as
the outputs register, then the line's owner and the last owner id the PLC refused."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from drivers.codecs.registers import (
    bits_to_word,
    int16_to_register,
    register_to_int16,
    register_to_scaled,
    word_bit,
)

# -- input registers (function 4) --------------------------------------------------------------
IR_DIGITAL = 0
IR_WATER_FLOW = 1  # L/min x 10, unsigned
IR_WATER_TEMP = 2  # C x 10, signed
IR_EXHAUST_DRAFT = 3  # Pa x 10, signed (negative = suction, as the draft should be)
IR_SUPPLY_AR = 4  # bar x 100, unsigned (gauge pressure at the supply panel)
IR_SUPPLY_O2 = 5
IR_SUPPLY_N2 = 6
IR_SUPPLY_SICL4 = 7  # SiCl4 vapour delivery (precursor) line
IR_SUPPLY_DOPANT = 8
IR_GAS_DETECTOR = 9  # acid-gas detector (Cl2 / HCl / HF), ppm x 100, unsigned
IR_ROD_TEMPERATURE = 10  # rod pyrometer, C x 10, unsigned
IR_ROOM_O2 = 11  # room O2 monitor, % x 100, unsigned
IR_OUTPUTS_EFFECTIVE = 12  # the outputs the PLC drives after its own logic, OUTPUT_BITS layout
IR_LINE_OWNER = 13  # owner id whose beats the PLC counts; 0 = free (none since power-up)
IR_REFUSED_OWNER = 14  # owner id of the last beat the PLC refused; 0 = none since power-up
INPUT_COUNT = 15

# -- holding registers (function 3 to read, 6 / 16 to write, 23 for both) ----------------
HR_OUTPUTS = 0
HR_HEARTBEAT = 1  # read-only: the counter of the last beat counted (a write: exception 2)
HR_COMMAND = 2  # write-only command; always reads 0
HR_BEAT_OWNER = 3  # the beat: owner id, then counter, written together by one FC 16
HR_BEAT_COUNTER = 4
BEAT_COUNT = 2  # registers in the beat write
# A read-only copy of the whole input block (IR 0-14) at HR 16-30: function 23 (read/write
# multiple registers) reads holding registers only, and with the copy the safety cycle's beat
# (HR 3-4) and its inputs go in one exchange instead of two. A write there: exception 2.
HR_INPUTS_COPY = 16
HOLDING_COUNT = HR_INPUTS_COPY + INPUT_COUNT

COMMAND_RESET_HEARTBEAT_LATCH = 1  # the only command; any other value: exception 3

FLOW_SCALE = 10.0
TEMP_SCALE = 10.0
DRAFT_SCALE = 10.0
PRESSURE_SCALE = 100.0
PPM_SCALE = 100.0
PYROMETER_SCALE = 10.0
O2_SCALE = 100.0
NOMINAL_ROOM_O2_PCT = 20.9  # fresh air

# Digital-input word bits (bit n = entry n); bits 9-15 read 0.
DIGITAL_BITS: tuple[str, ...] = (
    "estop_ok",
    "doors_closed",
    "scrubber_ready",
    "safety_relay_ok",
    "rf_enable",  # the safety relay's RF-enable output, read back
    "plasma_optical",
    "heartbeat_ok",
    "gas_supply_ok",
    "heartbeat_latched",  # the PLC latched a heartbeat loss and waits for a reset
)
# Outputs word bits, in SafetyOutputs field order; bits 9-15 are reserved (must be 0).
OUTPUT_BITS: tuple[str, ...] = (
    "gas_master_valve",
    "precursor_valve",
    "exhaust_fan",
    "heater_a",
    "heater_b",
    "beacon_red",
    "beacon_amber",
    "beacon_green",
    "rf_permit",  # software RF permit, in series with the safety relay's RF enable
)
OUTPUTS_MASK = (1 << len(OUTPUT_BITS)) - 1
HEARTBEAT_MODULUS = 0x10000  # the counter wraps 65535 -> 0
NO_OWNER = 0  # the line is free; never a controller's id
MAX_OWNER_ID = 0xFFFF


@dataclass(frozen=True)
class SafetyOutputs:
    """The PLC's outputs. All off is the safe state (valves closed, heaters off)."""

    gas_master_valve: bool = False
    precursor_valve: bool = False
    exhaust_fan: bool = False
    heater_a: bool = False
    heater_b: bool = False
    beacon_red: bool = False
    beacon_amber: bool = False
    beacon_green: bool = False
    rf_permit: bool = False


@dataclass(frozen=True)
class SafetyInputs:
    """Every input of the safety PLC, in engineering units.

    The fields added after the first map revision (room O2, the latch bit, the effective
    outputs) have defaults (fresh air, nothing latched, all off) so that code building
    inputs by hand keeps working; ``decode_inputs`` always sets every field."""

    estop_ok: bool
    doors_closed: bool
    scrubber_ready: bool
    safety_relay_ok: bool
    rf_enable: bool
    plasma_optical: bool
    heartbeat_ok: bool
    gas_supply_ok: bool
    water_flow_l_min: float
    water_temp_c: float
    exhaust_draft_pa: float
    supply_ar_bar: float
    supply_o2_bar: float
    supply_n2_bar: float
    supply_sicl4_bar: float
    supply_dopant_bar: float
    gas_detector_ppm: float  # acid gas: Cl2 / HCl / HF
    rod_temperature_c: float
    room_o2_pct: float = NOMINAL_ROOM_O2_PCT
    heartbeat_latched: bool = False
    # What the PLC drives after its hard-wired logic; rf_permit = the RF enable it gives.
    outputs_effective: SafetyOutputs = field(default_factory=SafetyOutputs)
    line_owner: int = NO_OWNER  # whose beats the PLC counts (0: free)
    refused_owner: int = NO_OWNER  # the last owner id whose beat the PLC refused (0: none)


OUTPUT_NAMES: frozenset[str] = frozenset(f.name for f in fields(SafetyOutputs))
assert set(OUTPUT_BITS) == OUTPUT_NAMES

# Analog channels: field name -> (register, scale, signed).
ANALOG_CHANNELS: dict[str, tuple[int, float, bool]] = {
    "water_flow_l_min": (IR_WATER_FLOW, FLOW_SCALE, False),
    "water_temp_c": (IR_WATER_TEMP, TEMP_SCALE, True),
    "exhaust_draft_pa": (IR_EXHAUST_DRAFT, DRAFT_SCALE, True),
    "supply_ar_bar": (IR_SUPPLY_AR, PRESSURE_SCALE, False),
    "supply_o2_bar": (IR_SUPPLY_O2, PRESSURE_SCALE, False),
    "supply_n2_bar": (IR_SUPPLY_N2, PRESSURE_SCALE, False),
    "supply_sicl4_bar": (IR_SUPPLY_SICL4, PRESSURE_SCALE, False),
    "supply_dopant_bar": (IR_SUPPLY_DOPANT, PRESSURE_SCALE, False),
    "gas_detector_ppm": (IR_GAS_DETECTOR, PPM_SCALE, False),
    "rod_temperature_c": (IR_ROD_TEMPERATURE, PYROMETER_SCALE, False),
    "room_o2_pct": (IR_ROOM_O2, O2_SCALE, False),
}
ANALOG_NAMES: tuple[str, ...] = tuple(ANALOG_CHANNELS)


def encode_analog(value: float, scale: float, *, signed: bool) -> int:
    """A register for value x scale, clamped to the register's range as a transmitter
    saturates at the end of its span rather than wrapping."""
    raw = round(value * scale)
    if signed:
        return int16_to_register(max(-0x8000, min(0x7FFF, raw)))
    return max(0, min(0xFFFF, raw))


def decode_analog(word: int, scale: float, *, signed: bool) -> float:
    if signed:
        return register_to_int16(word) / scale
    return register_to_scaled(word, scale)


def encode_inputs(inputs: SafetyInputs) -> list[int]:
    words = [0] * INPUT_COUNT
    words[IR_DIGITAL] = bits_to_word(
        {bit: bool(getattr(inputs, name)) for bit, name in enumerate(DIGITAL_BITS)}
    )
    for name, (register, scale, signed) in ANALOG_CHANNELS.items():
        words[register] = encode_analog(getattr(inputs, name), scale, signed=signed)
    words[IR_OUTPUTS_EFFECTIVE] = encode_outputs(inputs.outputs_effective)
    words[IR_LINE_OWNER] = inputs.line_owner
    words[IR_REFUSED_OWNER] = inputs.refused_owner
    return words


def decode_inputs(words: list[int]) -> SafetyInputs:
    """Decode the whole input block; a wrong length or reserved bits set in the effective
    outputs word raise ValueError."""
    if len(words) != INPUT_COUNT:
        raise ValueError(f"the safety input block is {INPUT_COUNT} registers, got {len(words)}")
    values: dict[str, Any] = {
        name: word_bit(words[IR_DIGITAL], bit) for bit, name in enumerate(DIGITAL_BITS)
    }
    for name, (register, scale, signed) in ANALOG_CHANNELS.items():
        values[name] = decode_analog(words[register], scale, signed=signed)
    values["outputs_effective"] = decode_outputs(words[IR_OUTPUTS_EFFECTIVE])
    values["line_owner"] = words[IR_LINE_OWNER]
    values["refused_owner"] = words[IR_REFUSED_OWNER]
    return SafetyInputs(**values)


def encode_outputs(outputs: SafetyOutputs) -> int:
    return bits_to_word({bit: getattr(outputs, name) for bit, name in enumerate(OUTPUT_BITS)})


def decode_outputs(word: int) -> SafetyOutputs:
    """Decode the outputs word; reserved bits set are a malformed word."""
    if word & ~OUTPUTS_MASK:
        raise ValueError(f"outputs word {word:#06x} sets reserved bits")
    return SafetyOutputs(**{name: word_bit(word, bit) for bit, name in enumerate(OUTPUT_BITS)})


def next_heartbeat(counter: int) -> int:
    return (counter + 1) % HEARTBEAT_MODULUS


def check_owner_id(owner_id: int) -> int:
    """A controller's owner id: 1-65535 (0 means a free line)."""
    if not NO_OWNER < owner_id <= MAX_OWNER_ID:
        raise ValueError(f"an owner id is 1-{MAX_OWNER_ID}, got {owner_id}")
    return owner_id


def encode_beat(owner_id: int, counter: int) -> list[int]:
    """The heartbeat write's registers (HR 3-4): who beats, then the counter."""
    if not 0 <= counter < HEARTBEAT_MODULUS:
        raise ValueError(f"a heartbeat counter is 0-{HEARTBEAT_MODULUS - 1}, got {counter}")
    return [check_owner_id(owner_id), counter]


def format_owner_id(owner_id: int) -> str:
    """How an owner id is shown to people (logs, refusals, status): 0x1A2B."""
    return f"0x{owner_id:04X}"
