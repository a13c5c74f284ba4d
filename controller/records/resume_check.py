"""Whether a recipe may resume an interrupted run: only the very recipe it ran (its text's
SHA-256, as recorded at the start), never one that merely shares its name. A refusal names
the difference, so the operator can find the right file."""

from __future__ import annotations

import difflib

from controller.records.schema import RunSummary, recipe_hash

SHOWN_LINES = 6  # of the difference, in a refusal


def resume_refusal(run: RunSummary, ran_text: str | None, recipe_name: str,
                   recipe_text: str) -> str | None:
    """None if ``recipe_text`` is the recipe ``run`` ran; else why not, with the difference
    (``ran_text``, the recorded text, when the records still have it)."""
    if recipe_hash(recipe_text) == run.recipe_hash:
        return None
    head = (f"run {run.id} ran recipe {run.recipe_name!r} (sha256 {run.recipe_hash[:12]}), "
            f"not this {recipe_name!r} (sha256 {recipe_hash(recipe_text)[:12]})")
    if ran_text is None:
        return head + ": resume it with the recipe it ran"
    diff = [line for line in difflib.unified_diff(
        ran_text.splitlines(), recipe_text.splitlines(), "ran", "given", n=0, lineterm="")
        if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    shown = "; ".join(diff[:SHOWN_LINES]) + ("; ..." if len(diff) > SHOWN_LINES else "")
    return f"{head}: resume it with the recipe it ran; differences: {shown or 'whitespace'}"
