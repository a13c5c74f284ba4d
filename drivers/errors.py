"""The device layer's errors: each carries the device and what was asked, so the controller
can decide what a failure means (trip, suspend, alarm) without parsing messages."""

from __future__ import annotations


class DeviceError(Exception):
    """Base of every error raised below the controller."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device


class DeviceTimeout(DeviceError):
    """No valid reply arrived within the request timeout, after every retry."""

    def __init__(self, device: str, request: str, timeout_s: float) -> None:
        super().__init__(device, f"no reply to {request} within {timeout_s:g} s")
        self.request = request
        self.timeout_s = timeout_s


class DeviceProtocolError(DeviceError):
    """The device answered, but with an exception, a malformed or a corrupt frame."""

    def __init__(self, device: str, request: str, detail: str) -> None:
        super().__init__(device, f"{request}: {detail}")
        self.request = request
        self.detail = detail


class DeviceExceptionResponse(DeviceProtocolError):
    """A Modbus exception response (the device refused the request)."""

    def __init__(self, device: str, request: str, exception_code: int) -> None:
        super().__init__(device, request, f"Modbus exception code {exception_code}")
        self.exception_code = exception_code


class DeviceDisconnected(DeviceError):
    """The link is down (connection refused, reset, or the serial port vanished)."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(device, f"disconnected: {reason}")
        self.reason = reason


class DeviceRangeError(DeviceError, ValueError):
    """A value given to a driver lies outside the device's range; nothing was sent."""

    def __init__(self, device: str, quantity: str, value: float, low: float, high: float) -> None:
        super().__init__(device, f"{quantity}={value:g} outside [{low:g}, {high:g}]")
        self.quantity = quantity
        self.value = value
        self.low = low
        self.high = high
