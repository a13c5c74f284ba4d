"""A recipe file read, parsed and checked: every problem reported at once with its field path
and, where the YAML tells, its line; a bad recipe is refused before anything moves.

Reading is bounded: a recipe is a few KB of plain YAML, so a file larger than
``MAX_RECIPE_BYTES``, nested deeper than ``MAX_RECIPE_DEPTH`` or whose aliases expand to more than
``MAX_RECIPE_NODES`` nodes (a "billion laughs") is refused from the YAML's event stream, before a
node is composed: the work of reading any text is linear in its length. The service reads
recipes in a worker process all the same (``parse_worker``), so no recipe holds its loop."""

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

# The shipped recipes are 1-5 KB, at most 202 nodes and 5 levels deep
# (steps[3].layers[1].power_trim_kw[0]); these bounds leave a recipe 50 times that and keep the
# worst text cheap: refused from the event scan in milliseconds, or, the heaviest recipe they
# let through (some 580 layers), read and checked in 0.07 s and forecast in 0.03 s (at 50,000
# nodes it took 0.4 + 0.26 s and a service validating three at once lost the PLC heartbeat).
MAX_RECIPE_BYTES = 256 * 1024
MAX_RECIPE_NODES = 10_000  # counted with every alias expanded, as the checks would walk them
MAX_RECIPE_DEPTH = 32  # nesting of mappings and sequences (the composer recurses per level)

# libyaml's parser where the wheel has it (it scans a 256 KiB file ~20x faster than pure Python);
# the constructor is PyYAML's SafeConstructor either way.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BadValue(Exception):
    """A scalar YAML reads but Python cannot hold (2001-02-30, a 5,000-digit integer, !!int x)."""

    def __init__(self, node: yaml.Node, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


class _RecipeLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader whose value errors name their node (SafeConstructor lets ValueError escape)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        # What SafeConstructor's scalar conversions raise on a value they cannot convert
        # (`!!timestamp ''` is an AttributeError, `!!int ''` an IndexError).
        except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as exc:
            tag = str(node.tag).rsplit(":", 1)[-1]
            raise _BadValue(node, f"{node.value!r} is not a {tag}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Bounds


def _event_line(event: yaml.Event) -> int | None:
    return int(event.start_mark.line) + 1 if event.start_mark is not None else None


def too_large(size: int) -> str:
    """The reason a text or file of `size` bytes is refused unread (size > MAX_RECIPE_BYTES)."""
    return (f"too large: {size} bytes, more than the {MAX_RECIPE_BYTES} a recipe may have "
            "(a recipe file is a few KB)")


def _bounds_finding(text: str) -> tuple[Finding, int | None] | None:
    """The first bound the text breaks (its finding and 1-based line), or None: from the event
    stream, so a bomb is refused before any of it is composed. YAML errors pass through."""
    size = len(text) if len(text) > MAX_RECIPE_BYTES else len(text.encode("utf-8"))
    if size > MAX_RECIPE_BYTES:
        return ((), too_large(size)), None
    expanded = 0  # nodes so far, each alias counted as the nodes of its anchor
    sizes: dict[str, int] = {}  # anchor -> its node's expanded size, once the node is complete
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, expanded count at its start)
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in {anchor for anchor, _ in open_nodes}:
                return ((), f"alias *{event.anchor} is inside its own anchor: a recipe "
                            "cannot contain itself"), _event_line(event)
            expanded += sizes.get(event.anchor or "", 1)  # unknown: compose refuses it
        elif isinstance(event, yaml.ScalarEvent):
            expanded += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            expanded += 1
            open_nodes.append((event.anchor, expanded - 1))
            if len(open_nodes) > MAX_RECIPE_DEPTH:
                return ((), f"nested more than {MAX_RECIPE_DEPTH} levels deep (a recipe "
                            "needs 5)"), _event_line(event)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, start = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = expanded - start
        if expanded > MAX_RECIPE_NODES:
            return ((), f"too many aliases: the recipe expands to more than "
                        f"{MAX_RECIPE_NODES} values (a recipe has a few hundred)"), \
                _event_line(event)
    return None


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
    """Duplicate keys: YAML keeps the last silently, as it would a misspelt field. Each node is
    visited once (an alias's target is the same node each time it is named)."""
    findings: list[Finding] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, loc: Loc) -> None:
        if id(node) in visited:
            return
        visited.add(id(node))
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


def _loc_of(root: yaml.Node | None, target: yaml.Node) -> Loc:
    """The field path of a node (the first way to it, each node visited once); () if not found."""
    visited: set[int] = set()
    pending: list[tuple[yaml.Node, Loc]] = [(root, ())] if root is not None else []
    while pending:
        node, loc = pending.pop()
        if node is target:
            return loc
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                if key is target:
                    return loc
                pending.append((value, (*loc, str(key.value))))
        elif isinstance(node, yaml.SequenceNode):
            pending.extend((item, (*loc, i)) for i, item in reversed(list(enumerate(node.value))))
    return ()


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
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\\ud800" escape
        raise RecipeError(where, [RecipeIssue("", f"not valid text: {exc.reason}")]) from None
    try:
        bound = _bounds_finding(text)
        if bound is not None:
            (loc, reason), line_no = bound
            raise RecipeError(where, [RecipeIssue(format_loc(loc), reason, line_no)])
        loader = _RecipeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line_no = int(mark.line) + 1 if mark is not None else None
        raise RecipeError(where, [RecipeIssue("", f"not valid YAML: {exc}", line_no)]) from None
    except _BadValue as exc:
        loc = _loc_of(root, exc.node)
        raise RecipeError(where, [RecipeIssue(
            format_loc(loc), f"a value YAML cannot read: {exc.reason}",
            int(exc.node.start_mark.line) + 1)]) from None
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
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:  # refused unread: it may be any size
            raise RecipeError(path, [RecipeIssue("", too_large(size))])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(path, [RecipeIssue("", f"cannot read the recipe: {exc}")]) from None
    return parse_recipe(text, line, path)
