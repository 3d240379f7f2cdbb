"""Where the project's own files live: task definitions and config profiles.

The repo checkout is found from the package location (editable installs); `HARNESS_HOME` points elsewhere, e.g. a
copy of `tasks/` and `configs/` next to a non-editable install. `HARNESS_TASKS_PATH` adds further task folders
(colon-separated), searched after the built-in ones.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    env = os.environ.get("HARNESS_HOME")
    if env:
        return Path(env).resolve()
    repo = PACKAGE_DIR.parent
    if (repo / "tasks").is_dir():
        return repo
    return Path.cwd()


def task_dirs() -> list[Path]:
    dirs = [project_root() / "tasks"]
    extra = os.environ.get("HARNESS_TASKS_PATH", "")
    dirs += [Path(p).resolve() for p in extra.split(os.pathsep) if p]
    return dirs


def profiles_dir() -> Path:
    return project_root() / "configs" / "profiles"
