"""The RF generator's register map (docs/devices.md, "RF generator"): pure encode / decode.

Every value is one 16-bit register: powers are kW x 10 (0.1 kW resolution, so a stock Modbus
master reads them without a float decoder), the frequency is in kHz. Holding registers carry
commands and setpoints, input registers the readings. The driver and the simulator both use
this module, so they cannot disagree about an address or a scale."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.codecs.registers import (
    bits_to_word,
    register_to_scaled,
    scaled_to_register,
    word_bit,
)

# -- holding registers (function 3 to read, 6 / 16 to write) ---------------------------------
HR_RF_COMMAND = 0  # 1 = RF on, 0 = RF off
HR_POWER_SETPOINT = 1  # kW x 10
HR_RAMP_RATE = 2  # kW/s x 10, must be >= 1 (0.1 kW/s)
HR_FAULT_RESET = 3  # write 1 to reset a latched fault; reads back 0
HOLDING_COUNT = 4

RF_COMMAND_OFF = 0
RF_COMMAND_ON = 1
FAULT_RESET_REQUEST = 1

# -- input registers (function 4) --------------------------------------------------------------
IR_STATUS = 0  # status word, bits below
IR_FAULT_CODE = 1  # 0 = no fault
IR_FORWARD_POWER = 2  # kW x 10
IR_REFLECTED_POWER = 3  # kW x 10
IR_SETPOINT_ACTUAL = 4  # the setpoint in force, kW x 10
IR_FREQUENCY = 5  # kHz
INPUT_COUNT = 6

POWER_SCALE = 10.0  # register = kW x 10
RAMP_SCALE = 10.0  # register = kW/s x 10
FREQUENCY_SCALE = 1000.0  # register = MHz x 1000 (kHz)
MIN_RAMP_KW_S = 1 / RAMP_SCALE  # the smallest nonzero ramp the register holds

# Status word bits.
BIT_READY = 0  # no fault latched and RF enable present: an on-command would be accepted
BIT_RF_ON = 1  # RF output is on
BIT_PLASMA_LIT = 2  # the plasma sensor sees a plasma
BIT_INTERLOCK_OPEN = 3  # the RF enable from the safety relay is missing
BIT_FAULT = 4  # a fault is latched (see the fault code)
BIT_RAMPING = 5  # RF on and forward power still slewing toward the setpoint

# Fault codes (input register 1).
FAULT_NONE = 0
FAULT_INTERNAL = 1  # generator hardware fault (amplifier, cooling, supply)


@dataclass(frozen=True)
class RfStatus:
    """One reading of the generator, in engineering units."""

    forward_kw: float
    reflected_kw: float
    setpoint_kw: float
    ready: bool
    rf_on: bool
    plasma_lit: bool
    interlock_open: bool
    fault: bool
    fault_code: int
    ramping: bool


def encode_power_kw(kw: float) -> int:
    return scaled_to_register(kw, POWER_SCALE)


def decode_power_kw(word: int) -> float:
    return register_to_scaled(word, POWER_SCALE)


def encode_ramp_kw_s(rate: float) -> int:
    return scaled_to_register(rate, RAMP_SCALE)


def decode_ramp_kw_s(word: int) -> float:
    return register_to_scaled(word, RAMP_SCALE)


def encode_frequency_mhz(mhz: float) -> int:
    return scaled_to_register(mhz, FREQUENCY_SCALE)


def decode_frequency_mhz(word: int) -> float:
    return register_to_scaled(word, FREQUENCY_SCALE)


def encode_status_word(status: RfStatus) -> int:
    return bits_to_word(
        {
            BIT_READY: status.ready,
            BIT_RF_ON: status.rf_on,
            BIT_PLASMA_LIT: status.plasma_lit,
            BIT_INTERLOCK_OPEN: status.interlock_open,
            BIT_FAULT: status.fault,
            BIT_RAMPING: status.ramping,
        }
    )


def encode_inputs(status: RfStatus, frequency_mhz: float) -> list[int]:
    """The whole input-register image, IR 0 to IR 5."""
    words = [0] * INPUT_COUNT
    words[IR_STATUS] = encode_status_word(status)
    words[IR_FAULT_CODE] = status.fault_code
    words[IR_FORWARD_POWER] = encode_power_kw(status.forward_kw)
    words[IR_REFLECTED_POWER] = encode_power_kw(status.reflected_kw)
    words[IR_SETPOINT_ACTUAL] = encode_power_kw(status.setpoint_kw)
    words[IR_FREQUENCY] = encode_frequency_mhz(frequency_mhz)
    return words


def decode_status(words: list[int]) -> RfStatus:
    """Decode IR 0 to IR 4 (a longer block, e.g. with the frequency, is accepted)."""
    if len(words) < IR_SETPOINT_ACTUAL + 1:
        raise ValueError(f"the RF status block is {IR_SETPOINT_ACTUAL + 1} registers")
    status = words[IR_STATUS]
    return RfStatus(
        forward_kw=decode_power_kw(words[IR_FORWARD_POWER]),
        reflected_kw=decode_power_kw(words[IR_REFLECTED_POWER]),
        setpoint_kw=decode_power_kw(words[IR_SETPOINT_ACTUAL]),
        ready=word_bit(status, BIT_READY),
        rf_on=word_bit(status, BIT_RF_ON),
        plasma_lit=word_bit(status, BIT_PLASMA_LIT),
        interlock_open=word_bit(status, BIT_INTERLOCK_OPEN),
        fault=word_bit(status, BIT_FAULT),
        fault_code=words[IR_FAULT_CODE],
        ramping=word_bit(status, BIT_RAMPING),
    )
