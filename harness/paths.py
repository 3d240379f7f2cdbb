"""Where the project's own files live: task definitions and config profiles.

- A checkout (an editable install): `tasks/` and `configs/` at the top of the repository.
- An installed wheel: the copies packaged inside it (`harness/_project/`; pyproject.toml maps them there).
- `HARNESS_HOME=<folder>` replaces both with a folder holding `tasks/` and `configs/`.
- `HARNESS_TASKS_PATH=<dir>[:<dir>...]` adds task folders of the user's own, read after the built-in ones; a task
  defined twice is an error that names both files.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED = PACKAGE_DIR / "_project"  # tasks/ and configs/ as an installed wheel carries them
TASKS_PATH_ENV = "HARNESS_TASKS_PATH"


def _is_project(folder: Path) -> bool:
    return (folder / "tasks").is_dir() and (folder / "configs" / "profiles").is_dir()


def project_root() -> Path:
    env = os.environ.get("HARNESS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    for candidate in (PACKAGE_DIR.parent, BUNDLED):
        if _is_project(candidate):
            return candidate
    return Path.cwd()


def task_dirs() -> list[Path]:
    """The folders scanned for `task.yaml` and `probe.yaml` files, built-in first."""
    dirs = [project_root() / "tasks"]
    extra = os.environ.get(TASKS_PATH_ENV, "")
    for p in extra.split(os.pathsep):
        if p.strip():
            d = Path(p.strip()).expanduser().resolve()
            if d not in dirs:
                dirs.append(d)
    return dirs


def profiles_dir() -> Path:
    return project_root() / "configs" / "profiles"


def hpo_dir() -> Path:
    return project_root() / "configs" / "hpo"
