"""The import layering of the three packages, read from their source (AST, no import).

The rules (docs/architecture.md, "Import boundaries"):
- the core (the modules directly in `launcher/`) imports no backend subpackage at module
  level: `sagemaker`, `control`, `mpi`, `local` and `doctor` are imported lazily, where a
  command or backend needs them;
- the control channel and the plan import nothing from process supervision (`procs`,
  `supervise`, `containment`, `watchdog`, `app`), at any level;
- `collectives` imports only `launcher.contract` from the launcher;
- `serving` imports nothing from `launcher`.

And for the code around them: `bench` shares the test suite's helpers (`tests.helpers`, the
simulated cluster) as ordinary package imports, never a test module and never through
`sys.path`; the tests never import `bench`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGES = (
    *("sagemaker", "control", "mpi", "local", "doctor", "hangs", "platforms", "preflight"),
    "restarts",
)
SUPERVISION = ("procs", "supervise", "containment", "watchdog", "app")
# What the benchmarks may import from tests/: libraries, not test modules or fixtures.
BENCH_MAY_IMPORT = (
    "tests.helpers",
    "tests.multihost.cluster",
    "tests.multihost.slurm",
    "tests.multihost.platform_envs",
)


def imports(path: Path, *, top_level_only: bool) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in `path`; with `top_level_only`, only those executed
    at import time (module level, including under `if`/`try`, excluding `TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])

    def visit(nodes: list[ast.stmt], top: bool) -> Iterator[tuple[int, str]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                yield node.lineno, base
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not top_level_only:
                    yield from visit(node.body, False)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        yield from visit([c for c in children if isinstance(c, ast.stmt)], top)
                        for handler in children:
                            if isinstance(handler, ast.ExceptHandler):
                                yield from visit(handler.body, top)

    yield from visit(tree.body, True)


def modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_the_core_imports_no_backend_subpackage_at_module_level() -> None:
    bad = [
        f"{path.name}:{line} imports {name}"
        for path in sorted((REPO / "launcher").glob("*.py"))
        for line, name in imports(path, top_level_only=True)
        if any(name == f"launcher.{p}" or name.startswith(f"launcher.{p}.") for p in SUBPACKAGES)
    ]
    assert not bad, bad


@pytest.mark.parametrize("where", ["launcher/control", "launcher/plan.py"])
def test_the_control_channel_and_the_plan_know_nothing_of_supervision(where: str) -> None:
    paths = [REPO / where] if where.endswith(".py") else modules(where)
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in paths
        for line, name in imports(path, top_level_only=False)
        if any(name == f"launcher.{m}" or name.startswith(f"launcher.{m}.") for m in SUPERVISION)
    ]
    assert not bad, bad


def test_collectives_imports_only_the_contract() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in modules("collectives")
        for line, name in imports(path, top_level_only=False)
        if name.startswith("launcher")
        and name not in ("launcher", "launcher.contract")
        and not name.startswith("launcher.contract.")
    ]
    assert not bad, bad


def test_serving_imports_nothing_from_the_launcher() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in modules("serving")
        for line, name in imports(path, top_level_only=False)
        if name == "launcher" or name.startswith("launcher.")
    ]
    assert not bad, bad


def test_every_subpackage_says_what_it_owns() -> None:
    for name in SUBPACKAGES:
        init = REPO / "launcher" / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) > 20, f"launcher/{name}/__init__.py needs its docstring"


def _within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(f"{root}.") for root in roots)


def test_the_benchmarks_import_test_helpers_never_test_modules() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in modules("bench")
        for line, name in imports(path, top_level_only=False)
        if _within(name, ("tests",)) and not _within(name, BENCH_MAY_IMPORT)
    ]
    bad += [
        f"{p.relative_to(REPO)} edits sys.path"
        for p in modules("bench")
        if "sys.path" in p.read_text()
    ]
    assert not bad, bad


def test_the_tests_never_import_the_benchmarks() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in modules("tests")
        if "data" not in path.relative_to(REPO).parts
        for line, name in imports(path, top_level_only=False)
        if _within(name, ("bench",))
    ]
    assert not bad, bad
