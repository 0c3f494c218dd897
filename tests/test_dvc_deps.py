"""Every stage declares, as DVC deps, all the pipeline code its command runs.

A stage whose command imports `pipeline/io.py` but does not declare it is reported up
to date by `dvc repro` after io.py changed: a stale output DVC calls good. So the
import closure is computed from the code and compared with dvc.yaml, both ways: a
missing dep is a stale output waiting to happen, a needless one re-runs a stage for
nothing.

What runs for `crispml <step>`: the module-level imports of `pipeline/cli.py` (only
their module-level code runs), the imports of its entry point `main`, of the stage
wrapper and of the settings loader it calls, and everything the step's
module imports, at module level or inside its functions (any of them may run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline"


def _module_file(dotted: str) -> Path | None:
    path = ROOT.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module_level_only: bool) -> list[str]:
    """Dotted `pipeline...` names a module imports (skipping `if TYPE_CHECKING:`)."""
    found: list[str] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse, top)
                continue
            if isinstance(child, ast.Import):
                found.extend(a.name for a in child.names if a.name.split(".")[0] == "pipeline")
            elif (
                isinstance(child, ast.ImportFrom)
                and child.level == 0
                and (child.module or "").split(".")[0] == "pipeline"
            ):
                found.append(child.module)
                found.extend(f"{child.module}.{a.name}" for a in child.names)
            is_scope = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if is_scope and module_level_only:
                continue
            visit(child, top and not is_scope)

    visit(tree, True)
    return found


def _files_of(dotted: str) -> set[Path]:
    """The file a dotted name runs, plus every package __init__ above it."""
    files = set()
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        found = _module_file(".".join(parts[:i]))
        if found is not None:
            files.add(found)
    return files


def closure(roots: set[Path], module_level_only: bool) -> set[Path]:
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for dotted in _imports(tree, module_level_only):
            todo.extend(_files_of(dotted) - seen)
    return seen


def _stage_function(cli_tree: ast.Module, command: str) -> ast.FunctionDef:
    for node in cli_tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == command:
            return node
    raise AssertionError(f"pipeline/cli.py has no command function {command!r}")


def required_code(command: str) -> set[Path]:
    """The pipeline files `crispml <command>` runs."""
    cli_file = PIPELINE / "cli.py"
    cli_tree = ast.parse(cli_file.read_text())
    at_import = closure({cli_file}, module_level_only=True)
    # The entry point (which hands stage commands to the warm process, pipeline/warm.py),
    # the stage wrapper and the settings loader it calls run for every step.
    shared = [_stage_function(cli_tree, name) for name in ("main", "stage", "settings_for")]
    step = _stage_function(cli_tree, command)
    roots: set[Path] = set()
    for node in (*shared, step):
        for dotted in _imports(node, module_level_only=False):
            roots |= _files_of(dotted)
    return at_import | closure(roots, module_level_only=False)


def _declared(deps: list) -> set[Path]:
    covered: set[Path] = set()
    for dep in deps:
        path = ROOT / str(dep)
        if not str(dep).startswith("pipeline"):
            continue
        covered |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return covered


def _stages() -> list[tuple[str, str, list]]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    out = []
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        command = body["cmd"].split()[1]
        out.append((name, command, body.get("deps", [])))
    return out


@pytest.mark.parametrize(("name", "command", "deps"), _stages(), ids=[s[0] for s in _stages()])
def test_stage_deps_are_the_import_closure_of_its_command(name, command, deps) -> None:
    required = required_code(command)
    declared = _declared(deps)
    missing = sorted(str(p.relative_to(ROOT)) for p in required - declared)
    assert not missing, f"stage {name!r} runs but does not declare: {missing}"
    needless = [
        str(dep)
        for dep in deps
        if str(dep).startswith("pipeline") and not (_declared([dep]) & required)
    ]
    assert not needless, f"stage {name!r} declares code it never runs: {needless}"


def test_the_closure_follows_lazy_imports_and_skips_type_checking(tmp_path) -> None:
    """The checker itself: a function-level import counts, a TYPE_CHECKING one does not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pipeline import report\n"
        "def f():\n    from pipeline import io\n"
    )
    tree = ast.parse(source)
    assert _imports(tree, module_level_only=False) == ["pipeline", "pipeline.io"]
    assert _imports(tree, module_level_only=True) == []
