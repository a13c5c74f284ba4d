"""The line model: devices, buses, limits, device groups, unit conversions, defaults; logging
setup."""
