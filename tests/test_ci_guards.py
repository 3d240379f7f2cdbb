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
