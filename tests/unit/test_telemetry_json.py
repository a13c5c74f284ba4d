"""The telemetry snapshot as plain data (HMI status, records, MQTT): every reading's fields, a
nested dataclass as a dict, status words as a sorted list; the same document that
``dataclasses.asdict`` gave before the snapshot was built field by field for speed."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.machine.telemetry import LinkHealth, Telemetry
from drivers.diameter_gauge import GaugeReading
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.safety_io import SafetyInputs
from drivers.servo_axis import AxisStatus

status_words = st.frozensets(st.sampled_from(["MOV", "VOV", "POV", "TOV", "LCK", "HLD"]))
mfc_readings = st.builds(MfcReading, status=status_words)


def reference(telemetry: Telemetry) -> dict[str, Any]:
    """The earlier to_json: asdict, top-level frozensets sorted."""
    def plain(value: object) -> Any:
        if value is None:
            return None
        return {k: (sorted(v) if isinstance(v, frozenset) else v)
                for k, v in asdict(value).items()}  # type: ignore[call-overload]

    return {"rf": plain(telemetry.rf), "safety": plain(telemetry.safety),
            "mfcs": {k: plain(v) for k, v in telemetry.mfcs.items()},
            "axes": {k: plain(v) for k, v in telemetry.axes.items()},
            "gauge": plain(telemetry.gauge),
            "links": {k: v.ok for k, v in telemetry.health.items()}}


def _text(document: dict[str, Any]) -> str:
    return json.dumps(document, default=str, sort_keys=True)


@settings(max_examples=50)
@given(rf=st.none() | st.builds(RfStatus), safety=st.none() | st.builds(SafetyInputs),
       mfcs=st.dictionaries(st.sampled_from(["mfc_ar", "mfc_o2", "mfc_sicl4"]), mfc_readings),
       axes=st.dictionaries(st.sampled_from(["spindle", "carriage"]), st.builds(AxisStatus)),
       gauge=st.none() | st.builds(GaugeReading))
def test_the_snapshot_is_the_readings_as_plain_data(
        rf: RfStatus | None, safety: SafetyInputs | None, mfcs: dict[str, MfcReading],
        axes: dict[str, AxisStatus], gauge: GaugeReading | None) -> None:
    telemetry = Telemetry(rf=rf, safety=safety, mfcs=mfcs, axes=axes, gauge=gauge,
                          health={"rf": LinkHealth()})
    snapshot = telemetry.to_json()
    # Compared as the HMI and the records write it (a NaN reading equals itself there).
    assert _text(snapshot) == _text(reference(telemetry))
    for name, reading in mfcs.items():
        assert snapshot["mfcs"][name]["status"] == sorted(reading.status)
    if safety is not None:  # a nested reading is a dict of its own, not shared
        assert snapshot["safety"]["outputs_effective"] == asdict(safety.outputs_effective)
