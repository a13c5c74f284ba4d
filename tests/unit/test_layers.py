"""The layer contract: import-linter's contracts (pyproject.toml) hold, and an AST scan that
needs no extra tool checks the two rules that matter most at run time: neither the controller
nor the drivers import the simulators, and nothing outside tests/ imports tests."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = {".venv", ".git", "tests", "build", "dist", "node_modules", "__pycache__"}


def _python_files(top: Path) -> Iterator[Path]:
    """Python sources under top, pruning the venv and other trees that are not ours."""
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = sorted(
            d for d in subdirectories if d not in NOT_SOURCE and not d.startswith(".")
        )
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory) / name


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement names, plus importlib's literal targets."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules.add(node.args[0].value)
    return modules


def _offenders(files: Iterator[Path], forbidden: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path))
        if module == forbidden or module.startswith(forbidden + ".")
    ]


def test_import_linter_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("package", ["controller", "drivers"])
def test_runtime_packages_never_import_simulators(package: str) -> None:
    files = list(_python_files(ROOT / package))
    assert files, f"no Python files under {package}/"
    assert _offenders(iter(files), "simulators") == []


def test_drivers_never_import_the_controller() -> None:
    assert _offenders(_python_files(ROOT / "drivers"), "controller") == []


def test_nothing_outside_tests_imports_tests() -> None:
    # bench/ is developer tooling, not shipped: its benchmarks reuse the system-test rig.
    files = [p for p in _python_files(ROOT) if not p.is_relative_to(ROOT / "bench")]
    assert any(p.is_relative_to(ROOT / "controller") for p in files)
    assert not any(p.is_relative_to(ROOT / "tests") for p in files)
    assert _offenders(iter(files), "tests") == []


def test_the_scan_sees_every_import_form(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import simulators.plant\n"
        "from simulators import line\n"
        "from . import sibling\n"
        "import importlib\n"
        "importlib.import_module('simulators.serve')\n"
        "def f():\n"
        "    import tests.conftest\n"
    )
    assert imported_modules(source) == {
        "simulators.plant", "simulators", "importlib", "simulators.serve", "tests.conftest"
    }
