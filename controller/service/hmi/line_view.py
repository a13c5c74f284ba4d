"""The line as the screens draw it, once per page load: the interlocks (the table the
monitor evaluates, each with the alarm of the same id), the axes with their soft limits and
speeds, the gases with their full scales, the RF's test power and the jog lease."""

from __future__ import annotations

from typing import Any

from controller.config.line import AXIS_NAMES, MFC_NAMES, LineConfig
from controller.safety.interlocks import INTERLOCKS


def line_view(line: LineConfig) -> dict[str, Any]:
    supervision = line.supervision
    axes = {}
    for name in AXIS_NAMES:
        axis = line.axis(name)
        axes[name] = {
            "motion": axis.motion, "min_position_mm": axis.min_position_mm,
            "max_position_mm": axis.max_position_mm, "max_speed": axis.max_speed,
            "setup_speed": axis.setup_speed,
            "unit": "rpm" if axis.motion == "rotary" else "mm/min"}
    return {
        "line": line.line, "machine": line.machine,
        "interlocks": [{"id": i.id, "description": i.description, "signal": i.signal,
                        "reaction": i.reaction.value} for i in INTERLOCKS],
        "axes": axes,
        "mfcs": {name: {"gas": line.mfc(name).gas,
                        "full_scale_slpm": line.mfc(name).full_scale_slpm}
                 for name in MFC_NAMES},
        "device_test_max_power_kw": supervision.device_test_max_power_kw,
        "jog_lease_s": supervision.jog_lease_s,
    }
