"""A recipe file read, parsed and checked: every problem reported at once with its field path
and, where the YAML tells, its line; a bad recipe is refused before anything moves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controller.config.line import LineConfig
from controller.recipes.checks import check_recipe
from controller.recipes.recipe import (
    STEP_KINDS,
    Finding,
    Loc,
    Recipe,
    RecipeError,
    RecipeIssue,
    format_loc,
)

# --------------------------------------------------------------------------------------------
# Loading


def _pydantic_findings(exc: ValidationError) -> list[Finding]:
    return [(_clean_loc(e["loc"]), _pydantic_reason(e)) for e in exc.errors() if not _echo(e)]


def _echo(error: Any) -> bool:
    """A length error that only echoes invalid items (pydantic counts the valid ones)."""
    if error["type"] != "too_short":
        return False
    given = error.get("input")
    return isinstance(given, list | tuple) and len(given) >= error["ctx"]["min_length"]


def _clean_loc(loc: tuple[int | str, ...]) -> Loc:
    """Drop the discriminator tag pydantic puts after a step's index (steps.3.deposit.layers)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        tagged = i >= 2 and loc[i - 2] == "steps" and isinstance(loc[i - 1], int)
        if tagged and part in STEP_KINDS:
            continue
        out.append(part)
    return tuple(out)


def _pydantic_reason(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field (misspelt? `povd recipe schema` lists the fields)"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, int | float | str | bool) and kind not in ("union_tag_invalid",):
        return f"{message} (got {value!r})"
    return message


def _yaml_findings(root: yaml.Node | None) -> list[Finding]:
    """Duplicate keys: YAML keeps the last silently, as it would a misspelt field."""
    findings: list[Finding] = []

    def walk(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                if name in seen and name != "<<":
                    findings.append(((*loc, name), "duplicate key: YAML would keep the last"))
                seen.add(name)
                walk(value, (*loc, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return findings


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the deepest node of the file along a field path."""
    node = root
    if node is None:
        return None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _issues(findings: Sequence[Finding], root: yaml.Node | None) -> list[RecipeIssue]:
    issues = [RecipeIssue(format_loc(loc), reason, _line_of(root, loc)) for loc, reason in findings]
    # In the order of the file, as the operator reads it.
    return sorted(issues, key=lambda issue: issue.line or 0)


def parse_recipe(text: str, line: LineConfig, path: Path | None = None) -> Recipe:
    """Validate recipe text (e.g. the text recorded in a run header) against a line."""
    where = path or Path("<recipe>")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line_no = int(mark.line) + 1 if mark is not None else None
        raise RecipeError(where, [RecipeIssue("", f"not valid YAML: {exc}", line_no)]) from None
    findings = _yaml_findings(root)
    if not isinstance(data, dict):
        findings.append(((), "a recipe is a YAML mapping (name, version, steps)"))
        raise RecipeError(where, _issues(findings, root))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        # Structure first: limit checks need a well-formed recipe to read.
        raise RecipeError(where, _issues(findings + _pydantic_findings(exc), root)) from None
    findings += [(_parse_field(i.field), i.reason) for i in check_recipe(recipe, line)]
    issues = _issues(findings, root)
    if issues:
        raise RecipeError(where, issues)
    recipe._text = text
    recipe._path = path
    return recipe


def _parse_field(field: str) -> Loc:
    """'steps[3].layers[1].x' -> ('steps', 3, 'layers', 1, 'x'): the inverse of format_loc."""
    loc: list[str | int] = []
    for part in field.replace("[", ".[").split("."):
        if not part:
            continue
        loc.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(loc)


def load_recipe(path: Path, line: LineConfig) -> Recipe:
    """Read and validate a recipe file; RecipeError lists every problem with its field path."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(path, [RecipeIssue("", f"cannot read the recipe: {exc}")]) from None
    return parse_recipe(text, line, path)
