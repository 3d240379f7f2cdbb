"""The task registry: every `task.yaml` under a task folder (harness.paths.task_dirs) is a task, named by its folder.

Adding a task never touches Python. The registry validates every file when it loads and fails on the first bad one,
naming the file and the field. What a task file leaves out comes from its family (metrics, main metric, direction,
the columns of the family's roles), and a file may `include` a shared base (e.g. tasks/_include/wmt16.yaml).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config import RunConfig, TaskSpec, check_keys, deep_merge, error_text, load_yaml
from harness.errors import ConfigError
from harness.families import FAMILIES, FamilyInfo, direction_of
from harness.paths import task_dirs


def _field_error(path: Path, e: ValidationError) -> ConfigError:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return ConfigError(
            f"{path}: unknown field '{loc}'", "remove it or fix its spelling (see docs/tasks.md, 'Adding a task')"
        )
    if err["type"] == "missing":
        return ConfigError(f"{path}: missing required field '{loc}'", "add it (see docs/tasks.md, 'Adding a task')")
    return ConfigError(
        f"{path}: field '{loc}': {error_text(err)}", "fix that field (see docs/tasks.md, 'Adding a task')"
    )


def read_task_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A task file's mapping, with the file it `include`s (a path relative to it) merged underneath: the task's own
    keys win, nested mappings merge, lists are replaced."""
    data = load_yaml(path)
    ref = data.pop("include", None)
    if ref is None:
        return data
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{path}: field 'include' must be a file path", "write e.g. include: ../_base/wmt16.yaml")
    base = (path.parent / ref).resolve()
    if base in (*_seen, path.resolve()):
        raise ConfigError(
            f"{path}: field 'include': {base} includes itself (through {len(_seen) + 1} file(s))", "remove the cycle"
        )
    if not base.is_file():
        raise ConfigError(
            f"{path}: field 'include': {base} does not exist",
            "give the path of a YAML file, relative to this task file",
        )
    return deep_merge(read_task_yaml(base, (*_seen, path.resolve())), data)


def load_task_file(path: Path) -> TaskSpec:
    data = read_task_yaml(path)
    name = path.parent.name
    if "name" in data and data["name"] != name:
        raise ConfigError(f"{path}: field 'name' is '{data['name']}' but the folder is '{name}'", "make them equal")
    data["name"] = name
    try:
        task = TaskSpec.model_validate(data)
    except ValidationError as e:
        raise _field_error(path, e) from None
    task.path = str(path)
    info = _family(task, path)
    _check_options(task, info, path)
    _fill_defaults(task, info, path)
    _check_against_family(task, info, path)
    check_keys(task.config, RunConfig, f"{path}: field 'config'")
    for prof, overrides in task.profiles.items():
        check_keys(overrides, RunConfig, f"{path}: field 'profiles.{prof}'")
    return task


def _family(task: TaskSpec, path: Path) -> FamilyInfo:
    info = FAMILIES.get(task.family)
    if info is None:
        raise ConfigError(
            f"{path}: field 'family': unknown family '{task.family}'", f"use one of: {', '.join(sorted(FAMILIES))}"
        )
    return info


def _check_options(task: TaskSpec, info: FamilyInfo, path: Path) -> None:
    allowed_options = dict(info.options)
    for key, value in task.options.items():
        if key not in allowed_options:
            known = ", ".join(allowed_options) or "none"
            raise ConfigError(
                f"{path}: field 'options.{key}' is not an option of family '{task.family}'",
                f"options of this family: {known}",
            )
        if str(value) not in allowed_options[key]:
            raise ConfigError(
                f"{path}: field 'options.{key}': {value!r} is not one of {list(allowed_options[key])}",
                'use one of those values (quote it in YAML, e.g. "2.0")',
            )


def _fill_defaults(task: TaskSpec, info: FamilyInfo, path: Path) -> None:
    """What the file leaves out comes from the family: the roles' columns (a role's column is named like the role),
    the metrics, the main metric, and the main metric's direction."""
    task.columns = {**{role: role for role in info.required_columns}, **task.columns}
    if task.metrics is None:
        task.metrics = list(info.metrics_for(task.options))
    elif not task.metrics:
        raise ConfigError(
            f"{path}: field 'metrics' is empty",
            f"list some of: {', '.join(info.metrics)}, or leave it out for the family's default",
        )
    if task.main_metric is None:
        task.main_metric = info.main_metric if info.main_metric in task.metrics else task.metrics[0]
    if task.main_metric not in task.metrics:
        raise ConfigError(
            f"{path}: field 'main_metric': '{task.main_metric}' is not one of the task's metrics "
            f"({', '.join(task.metrics)})",
            "name one of them, or add it to `metrics`",
        )
    if task.direction is None:
        task.direction = direction_of(task.main_metric)


def _check_against_family(task: TaskSpec, info: FamilyInfo, path: Path) -> None:
    allowed = set(info.required_columns) | set(info.optional_columns)
    extra = [c for c in task.columns if c not in allowed]
    if extra:
        raise ConfigError(
            f"{path}: field 'columns.{extra[0]}' is not a role of family '{task.family}'",
            f"roles are: {', '.join(sorted(allowed))}",
        )
    unknown = [m for m in task.metrics or [] if m not in info.metrics]
    if unknown:
        raise ConfigError(
            f"{path}: field 'metrics': unknown metric '{unknown[0]}' for family '{task.family}'",
            f"use some of: {', '.join(info.metrics)}",
        )
    if info.needs_labels and not task.labels:
        raise ConfigError(f"{path}: missing field 'labels'", f"family '{task.family}' needs the list of label names")
    for name, d in [*task.dataset.derive.items(), *task.dataset.fallback.items()]:
        if d.stratify and "label" not in task.columns:
            raise ConfigError(f"{path}: field 'dataset.derive.{name}.stratify' needs a `label` column")


def scan_folders(filename: str, load: Callable[[Path], Any], what: str) -> dict[str, Any]:
    """Every `filename` under the task folders, loaded with `load` and keyed by `.name`; a name defined twice is an
    error naming both files."""
    found: dict[str, Any] = {}
    for root in task_dirs():
        for path in sorted(root.rglob(filename)) if root.is_dir() else []:
            item = load(path)
            if item.name in found:
                raise ConfigError(
                    f"{path}: {what} name '{item.name}' is also defined in {found[item.name].path}",
                    "rename one of the folders",
                )
            found[item.name] = item
    return found


def scan() -> dict[str, TaskSpec]:
    return scan_folders("task.yaml", load_task_file, "task")


@cache
def _cached_registry(key: tuple[str, ...]) -> dict[str, TaskSpec]:
    return scan()


def registry() -> dict[str, TaskSpec]:
    return _cached_registry(tuple(str(d) for d in task_dirs()))


def get_task(name: str) -> TaskSpec:
    tasks = registry()
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "(none)"
        raise ConfigError(f"unknown task '{name}'", f"known tasks: {known} (see `harness ls`)")
    return tasks[name].model_copy(deep=True)
