"""An installed harness (a built wheel, not the editable checkout) carries every package and the shipped tasks, and
finds task folders of the user's own through HARNESS_TASKS_PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from harness.paths import project_root

REPO = project_root()


BUILD: dict[str, str] = {}  # what building the wheel printed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    BUILD["output"] = done.stdout + done.stderr
    (path,) = out.glob("harness-*.whl")
    return path


def test_building_prints_no_package_warnings(wheel):
    """`make setup` printed some 1,000 lines of "Package would be ignored" for the data folders (a task's folder, an
    evaluate module's): each is listed in pyproject.toml, and a new one that is not fails here."""
    out = BUILD["output"]
    assert "Successfully built harness" in out
    assert "would be ignored" not in out and "is absent from the `packages` configuration" not in out, out[-3000:]


def test_wheel_holds_every_module_task_and_profile(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "harness").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel (list their package in pyproject.toml)"
    shipped = {
        f"harness/_project/{p.relative_to(REPO)}" for d in ("tasks", "configs") for p in (REPO / d).rglob("*.yaml")
    }
    assert shipped - names == set()
    assert "harness/probes/templates/counterfactual_sentiment.yaml" in names


def test_installed_harness_finds_its_tasks_and_the_users(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    mine = tmp_path / "my-tasks" / "reviews"
    mine.mkdir(parents=True)
    (mine / "task.yaml").write_text(
        yaml.safe_dump(
            {
                "family": "classification",
                "description": "my reviews",
                "labels": ["negative", "positive"],
                "dataset": {"local_dir": "reviews", "splits": {"test": {"local": "test.csv"}}},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HARNESS_TASKS_PATH": str(tmp_path / "my-tasks")}
    env.pop("HARNESS_HOME", None)
    work = tmp_path / "elsewhere"  # not the checkout, not a folder with tasks/
    work.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import harness.paths as p; print(p.project_root())"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == site / "harness" / "_project"
    ls = subprocess.run(
        [sys.executable, "-m", "harness.cli", "ls"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert ls.returncode == 0, ls.stderr[-2000:]
    assert f"  {site / 'harness' / '_project' / 'tasks'}\n" in ls.stdout
    assert f"  {tmp_path / 'my-tasks'}\n" in ls.stdout
    rows = {line.split()[0] for line in ls.stdout.splitlines() if line and not line.startswith(" ")}
    assert {"imdb", "squad", "wmt16_ro_en", "reviews"} <= rows
    validate = subprocess.run(
        [sys.executable, "-m", "harness.cli", "validate"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert validate.returncode == 0 and "reviews" in validate.stdout and "5 probe(s)" in validate.stdout


def test_make_reports_pages_are_not_left_untracked_in_the_checkout(tmp_path):
    """`make report` writes report.html and report.md in the checkout: git ignores them (they showed as untracked)."""
    for name in ("report.html", "report.md"):
        done = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", name], capture_output=True)
        assert done.returncode == 0, f"{name} is not ignored by git"
