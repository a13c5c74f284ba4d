"""Reading a recipe is bounded work: a YAML alias bomb, a huge file, deep nesting, a document
that contains itself or a value Python cannot hold is refused with a RecipeError that says why,
never an exception of another kind and never minutes of parsing (issue 11)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config.line import load_line_config
from controller.recipes.loading import (
    MAX_RECIPE_BYTES,
    MAX_RECIPE_DEPTH,
    MAX_RECIPE_NODES,
    load_recipe,
    parse_recipe,
)
from controller.recipes.parse_worker import RecipeReader, parse_recipe_off_loop
from controller.recipes.recipe import MAX_RUN_PASSES, MAX_STEP_S, RecipeError, recipe_hash

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml")) + sorted(
    (ROOT / "tests/system/recipes").glob("*.yaml"))
LINE = load_line_config()


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs": each level names the one below `width` times, so the last expands to
    width**levels values (9**9, some 387 million) from under 500 bytes of text."""
    lines = ["name: bomb", "version: 1", "description: &l0 lol"]
    lines += [f"x{k}: &l{k} [{','.join([f'*l{k - 1}'] * width)}]" for k in range(1, levels + 1)]
    lines.append(f"steps: *l{levels}")
    return "\n".join(lines) + "\n"


def refusal(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text, LINE)
    return caught.value


def test_the_alias_bomb_is_small() -> None:
    assert len(alias_bomb().encode()) < 500


def test_an_alias_bomb_is_refused_as_too_many_aliases() -> None:
    err = refusal(alias_bomb())
    assert len(err.errors) == 1
    issue = err.errors[0]
    assert "too many aliases" in issue.reason
    assert str(MAX_RECIPE_NODES) in issue.reason
    assert issue.line is not None  # where the expansion crossed the bound


def test_a_bomb_of_mappings_through_a_merge_key_is_refused() -> None:
    lines = ["name: bomb", "version: 1", "a0: &a0 {k: v}"]
    for k in range(1, 12):
        keys = ", ".join(f"m{j}: *a{k - 1}" for j in range(6))
        lines.append(f"a{k}: &a{k} {{{keys}}}")
    lines.append("steps: [{<<: *a11, step: purge, duration_s: 1}]")
    assert "too many aliases" in refusal("\n".join(lines)).errors[0].reason


def test_a_few_aliases_are_still_a_recipe_feature() -> None:
    text = (ROOT / "recipes/smoke-test.yaml").read_text()
    text = text.replace("        power_trim_kw: [-5, 5]", "        power_trim_kw: &trim [-5, 5]", 1)
    text = text.replace("        power_trim_kw: [-5, 5]", "        power_trim_kw: *trim")
    assert "*trim" in text
    recipe = parse_recipe(text, LINE)
    assert all(layer.power_trim_kw == (-5, 5) for _, s in recipe.deposit_steps()
               for layer in s.layers)


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    err = refusal("name: loop\nversion: 1\nsteps: &s [*s]\n")
    assert "inside its own anchor" in err.errors[0].reason


def test_a_text_over_the_size_bound_is_refused_unparsed() -> None:
    text = "name: big\nversion: 1\ndescription: " + "x" * MAX_RECIPE_BYTES + "\n"
    err = refusal(text)
    assert "too large" in err.errors[0].reason
    assert str(MAX_RECIPE_BYTES) in err.errors[0].reason


def test_the_size_bound_counts_bytes_not_characters() -> None:
    # 'é' is two bytes in UTF-8: under the bound in characters, over it in bytes.
    text = "description: " + "é" * (MAX_RECIPE_BYTES // 2 + 1)
    assert len(text) < MAX_RECIPE_BYTES
    assert "too large" in refusal(text).errors[0].reason


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_RECIPE_BYTES + 1))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, LINE)
    assert caught.value.path == path
    assert "too large" in caught.value.errors[0].reason


def test_deep_nesting_is_refused_before_the_composer_recurses() -> None:
    depth = MAX_RECIPE_DEPTH + 10
    err = refusal("steps: " + "[" * depth + "]" * depth + "\n")
    assert f"nested more than {MAX_RECIPE_DEPTH} levels" in err.errors[0].reason


def test_nesting_beyond_the_stack_is_a_refusal_not_a_recursion_error() -> None:
    # 100,000 levels would overflow PyYAML's recursive composer (a RecursionError).
    refusal("steps: " + "[" * 100_000)
    refusal("steps:\n" + "".join(" " * k + "- \n" for k in range(0, 20_000, 2)))


@pytest.mark.parametrize(("text", "field", "reason"), [
    ("name: x\nversion: 1\nstarted: 2001-02-30\n", "started", "day is out of range"),
    ("name: x\nversion: " + "9" * 5000 + "\n", "version", "4300 digits"),
    ("name: x\nversion: !!int one\n", "version", "invalid literal"),
    ("name: x\nversion: 1\nsteps: [{step: purge, duration_s: !!float soon}]\n",
     "steps[0].duration_s", "could not convert"),
])
def test_a_value_python_cannot_hold_names_its_field(text: str, field: str, reason: str) -> None:
    err = refusal(text)
    assert [issue.field for issue in err.errors] == [field]
    assert reason in err.errors[0].reason
    assert err.errors[0].line is not None


def test_a_lone_surrogate_is_refused_as_text() -> None:
    # JSON may carry "\ud800", which Python keeps in a str that UTF-8 cannot encode.
    assert "not valid text" in refusal("name: \ud800\n").errors[0].reason


def test_duplicate_keys_inside_an_anchor_are_reported_once() -> None:
    text = ("name: x\nversion: 1\nlayer: &l {passes: 1, passes: 2}\n"
            "steps: [{step: deposit, layers: [*l, *l, *l]}]\n")
    duplicates = [i for i in refusal(text).errors if "duplicate key" in i.reason]
    assert [i.field for i in duplicates] == ["layer.passes"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_still_loads(path: Path) -> None:
    assert load_recipe(path, LINE).total_passes() > 0


def test_a_run_of_more_passes_than_any_run_has_is_refused_at_its_steps() -> None:
    text = (ROOT / "recipes/smoke-test.yaml").read_text()
    text = text.replace("passes: 3", f"passes: {MAX_RUN_PASSES}", 1)
    err = refusal(text)
    assert [issue.field for issue in err.errors] == ["steps"]
    assert f"more than the {MAX_RUN_PASSES}" in err.errors[0].reason


# --------------------------------------------------------------------------------------------
# Off the loop: the service reads recipes in a worker process

# A worker that reads like the real one, except that a text starting "#hang" never answers.
HANGING_WORKER = (
    "import time\n"
    "from controller.recipes import parse_worker\n"
    "real = parse_worker.parse_recipe\n"
    "def parse(text, line, path):\n"
    "    if text.startswith('#hang'):\n"
    "        time.sleep(3600)\n"
    "    return real(text, line, path)\n"
    "parse_worker.parse_recipe = parse\n"
    "parse_worker._main()\n"
)


@pytest.fixture
def reader() -> Iterator[RecipeReader]:
    made = RecipeReader()
    yield made
    made.close()


async def test_off_the_loop_a_recipe_reads_as_it_does_in_process(reader: RecipeReader) -> None:
    path = ROOT / "recipes/f-doped-cladding.yaml"
    text = path.read_text()
    recipe = await reader.parse(text, LINE, path)
    assert recipe == parse_recipe(text, LINE, path)
    assert (recipe.text, recipe.path, recipe.sha256) == (text, path, recipe_hash(text))


async def test_off_the_loop_a_refusal_carries_every_issue(reader: RecipeReader) -> None:
    text = (ROOT / "recipes/smoke-test.yaml").read_text().replace("power_kw: 50", "power_kw: 500")
    with pytest.raises(RecipeError) as caught:
        await reader.parse(text, LINE, Path("x.yaml"))
    assert caught.value.path == Path("x.yaml")
    assert caught.value.errors == refusal(text).errors
    assert len(caught.value.errors) > 1


async def test_off_the_loop_the_alias_bomb_is_refused() -> None:
    with pytest.raises(RecipeError) as caught:
        await parse_recipe_off_loop(alias_bomb(), LINE)
    assert "too many aliases" in caught.value.errors[0].reason


async def test_a_text_over_the_bound_is_refused_before_the_pipe(reader: RecipeReader) -> None:
    with pytest.raises(RecipeError) as caught:
        await reader.parse("#" * (MAX_RECIPE_BYTES + 1), LINE)
    assert "too large" in caught.value.errors[0].reason
    assert reader._process is None  # no worker was needed to say so


async def test_a_read_past_the_timeout_is_refused_and_the_next_one_reads() -> None:
    reader = RecipeReader(timeout_s=1.0,
                          command=[sys.executable, "-c", HANGING_WORKER])
    try:
        with pytest.raises(RecipeError) as caught:
            await reader.parse("#hang\n" + alias_bomb(), LINE)
        assert "took more than 1 s to read" in caught.value.errors[0].reason
        text = (ROOT / "recipes/smoke-test.yaml").read_text()
        assert (await reader.parse(text, LINE)).name == "smoke-test"  # a new worker
    finally:
        reader.close()


async def test_a_worker_that_died_is_replaced(reader: RecipeReader) -> None:
    text = (ROOT / "recipes/smoke-test.yaml").read_text()
    await reader.parse(text, LINE)
    assert reader._process is not None
    reader._process.kill()
    reader._process.wait()
    assert (await reader.parse(text, LINE)).name == "smoke-test"


def test_a_step_longer_than_any_run_is_refused_at_its_field() -> None:
    # 1.7e308 s was a valid cool-down whose forecast gas volume overflowed to inf.
    text = (ROOT / "recipes/smoke-test.yaml").read_text().replace("duration_s: 900",
                                                                 "duration_s: 1.7e308")
    err = refusal(text)
    assert [issue.field for issue in err.errors] == ["steps[5].duration_s"]
    assert str(int(MAX_STEP_S)) in err.errors[0].reason
