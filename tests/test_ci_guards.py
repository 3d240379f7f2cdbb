"""Guards that keep CI honest and the code in shape: data-needing tests fail in CI when the data is missing; no import
cycle and no import of another module's private names; no function longer than a screen. (`make lint`, which CI
runs before the tests, checks style and formatting.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from harness.paths import project_root

REPO = project_root()
HARNESS = REPO / "harness"


def _pytest(test: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "CI"}
    full.update(HARNESS_TEST_DATA="none", **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_data_skips_locally_and_fails_in_ci():
    test = "tests/test_data.py::test_sst2_uses_glue_validation_as_test"
    local = _pytest(test)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
    assert "real datasets not found" in local.stdout  # the reason is printed
    ci = _pytest(test, CI="true")
    assert ci.returncode == 1 and ("1 error" in ci.stdout or "1 failed" in ci.stdout), ci.stdout[-2000:]
    assert "CI must have it" in ci.stdout


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules() -> dict[str, Path]:
    out = {}
    for p in HARNESS.rglob("*.py"):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def test_no_import_cycles_and_no_private_imports():
    """Imports anywhere in a module (also inside functions) count; `a -> b -> a` is a cycle."""
    mods = _modules()
    graph = {m: {n for n in _imports(p) if n in mods and n != m} for m, p in mods.items()}
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(graph[m]):
            if seen.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [m, n]))
            if n not in seen:
                visit(n, path + [m])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [])
    private = [
        (m, n)
        for m, p in mods.items()
        for n in _imports(p)
        if n.startswith("harness.") and n.rsplit(".", 1)[-1].startswith("_") and n not in mods
    ]
    assert not private, f"modules importing another module's private names: {private}"


MAX_FUNCTION_LINES = 80


def test_no_function_longer_than_a_screen():
    long = []
    for p in HARNESS.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


# The package's floors, lowest first (harness/__init__.py and docs/layout.md describe them). A module may import its
# own floor and those below it — also inside a function — never one above.
FLOORS = (
    ("ground", ("harness", "harness.errors", "harness.paths", "harness.config", "harness.hub", "harness.runtime",
                "harness.interrupts")),
    ("metrics", ("harness.metrics", "harness.evaluate_modules")),
    ("engines", ("harness.data", "harness.models", "harness.families", "harness.tracking", "harness.compress",
                 "harness.probes", "harness.serving", "harness.pyfunc_entry")),
    ("run", ("harness.run",)),
    ("commands", ("harness.commands", "harness.tuning")),
    ("cli", ("harness.cli",)),
)  # fmt: skip
MAX_TOP_MODULES = 12


def _floor(module: str) -> tuple[int, str] | None:
    """The floor of a module: that of the longest placed name it is, or lies in (the root counts only itself)."""
    level = {m: (i, name) for i, (name, ms) in enumerate(FLOORS) for m in ms}
    parts = module.split(".")
    for k in range(len(parts), 1, -1):
        if ".".join(parts[:k]) in level:
            return level[".".join(parts[:k])]
    return level.get(module)


def _imports_resolved(module: str, path: Path) -> set[str]:
    """What a module imports from harness, relative imports resolved and `from harness import x` read as harness.x."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n == "harness" or n.startswith("harness.")}


def test_every_module_has_a_floor_and_the_top_holds_at_most_twelve():
    mods = _modules()
    unplaced = sorted(m for m in mods if _floor(m) is None)
    assert not unplaced, f"modules on no floor (add them to FLOORS here and to docs/layout.md): {unplaced}"
    top = sorted(p.name for p in HARNESS.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules at the top of harness/ (at most {MAX_TOP_MODULES}): {top}"


def test_no_floor_imports_a_floor_above_it():
    mods = _modules()
    up = []
    for m, p in sorted(mods.items()):
        here = _floor(m)
        for n in sorted(_imports_resolved(m, p)):
            there = _floor(n) if n in mods or n.rsplit(".", 1)[0] in mods else None
            if here and there and there[0] > here[0]:
                up.append(f"{m} ({here[1]}) imports {n} ({there[1]})")
    assert not up, "imports from a higher floor:\n" + "\n".join(up)


def test_the_guard_sees_an_import_from_above(tmp_path):
    """The floors guard can fail: an engine that imports the run, even inside a function, is caught."""
    fake = tmp_path / "harness" / "data" / "leak.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from harness.run.runner import run\n    from ..commands import report\n")
    seen = _imports_resolved("harness.data.leak", fake)
    assert {"harness.run.runner", "harness.commands.report"} <= seen
    assert _floor("harness.data.leak")[0] < _floor("harness.run.runner")[0] < _floor("harness.commands.report")[0]


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    missing = []
    for init in sorted(HARNESS.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if "may import" not in doc.lower():
            missing.append(str(init.relative_to(REPO)))
    assert not missing, f"subpackages whose docstring does not say what they may import: {missing}"
