"""A resume takes only the recipe the run ran: same text (hash), not merely the same name."""

from __future__ import annotations

from controller.records.resume_check import resume_refusal
from controller.records.schema import RunSummary, recipe_hash

RAN = "name: cladding\nlayers:\n  - passes: 6\n    power_kw: 40\n"


def summary(text: str) -> RunSummary:
    fields = dict.fromkeys(RunSummary.__slots__)
    fields.update(id=12, recipe_name="cladding", recipe_hash=recipe_hash(text), line="line1",
                  machine="povd1", operator="olga")
    return RunSummary(**fields)


def test_the_same_text_resumes() -> None:
    assert resume_refusal(summary(RAN), RAN, "cladding", RAN) is None


def test_the_same_name_with_another_text_is_refused_with_the_difference() -> None:
    edited = RAN.replace("passes: 6", "passes: 7")
    why = resume_refusal(summary(RAN), RAN, "cladding", edited)
    assert why is not None
    assert why.startswith(f"run 12 ran recipe 'cladding' (sha256 {recipe_hash(RAN)[:12]}), "
                          f"not this 'cladding' (sha256 {recipe_hash(edited)[:12]})")
    assert "-  - passes: 6; +  - passes: 7" in why


def test_without_the_recorded_text_the_refusal_still_names_both_hashes() -> None:
    why = resume_refusal(summary(RAN), None, "cladding", RAN + "# note\n")
    assert why is not None
    assert recipe_hash(RAN)[:12] in why
    assert why.endswith("resume it with the recipe it ran")
