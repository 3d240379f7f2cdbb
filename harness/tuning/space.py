"""Search spaces: the YAML file, its checks, and sampling a trial's parameters from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, model_validator

from harness.config import RunConfig, Strict, TaskSpec, check_keys, error_text, flatten, load_yaml, set_dotted
from harness.errors import ConfigError


class ParamSpec(Strict):
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list[Union[float, int, str, bool, None]]] = None
    when: dict[str, Any] = {}  # sample only when these parameters have these values (a value or a list of values)

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes `choices`, not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if self.low > self.high or (self.type == "float" and self.low == self.high):
            raise ValueError(f"empty or inverted range: low {self.low} >= high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int parameter needs whole-number low and high")
        return self


class SearchSpace(Strict):
    params: dict[str, ParamSpec] = Field(min_length=1)
    config: dict[str, Any] = {}  # fixed overrides for every trial (e.g. a smaller subset for the search)
    path: Optional[str] = Field(default=None, exclude=True)

    def fixed_overrides(self) -> list[str]:
        """`config:` as command-line overrides (key=value), applied to every trial before the sampled values."""
        return [f"{k}={yaml_value(v)}" for k, v in flatten(self.config).items()]

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        for name, p in self.params.items():
            for dep in p.when:
                if dep not in self.params:
                    raise ValueError(f"'{name}': `when` refers to '{dep}', which is not a parameter of this space")
                if dep == name:
                    raise ValueError(f"'{name}': `when` cannot refer to itself")
        return self


def default_space_path(task: TaskSpec) -> Path:
    from harness.paths import hpo_dir

    return hpo_dir() / f"{task.family}.yaml"


def load_space(path: Path) -> SearchSpace:
    if not path.is_file():
        from harness.paths import hpo_dir

        known = sorted(p.name for p in hpo_dir().glob("*.yaml"))
        raise ConfigError(
            f"search space {path} does not exist", f"pass --space with a YAML file (shipped: {', '.join(known)})"
        )
    data = load_yaml(path)
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(
            f"{path}: {loc + ': ' if loc else ''}{error_text(err)}", "fix the search space (see docs/tuning.md)"
        ) from None
    space.path = str(path)
    return space


def check_space(space: SearchSpace, task: TaskSpec, overrides: list[str]) -> None:
    """Every key must be a run-config key, and the range ends / choices must be values the config accepts."""
    from harness.config import resolve_run_config

    for key in [*space.params, *flatten(space.config)]:
        one: dict[str, Any] = {}
        set_dotted(one, key, None)
        check_keys(one, RunConfig, f"{space.path}: parameter '{key}'")
    fixed = space.fixed_overrides()
    for key, p in space.params.items():
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        for v in values:
            if p.type == "int":
                v = int(v)
            try:
                resolve_run_config(task, [*fixed, *overrides, f"{key}={yaml_value(v)}"])
            except ConfigError as e:
                raise ConfigError(
                    f"{space.path}: parameter '{key}' value {v!r} is rejected by the config: {e.message}",
                    "change the range or choices",
                ) from None


def yaml_value(v: Any) -> str:
    """A value as the right-hand side of a key=value override."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def as_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={yaml_value(v)}" for k, v in params.items()]


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Sample the space in file order; a conditional parameter is sampled only when its condition holds."""
    chosen: dict[str, Any] = {}
    for name, p in space.params.items():
        if p.when and not all(_matches(chosen.get(dep, _MISSING), want) for dep, want in p.when.items()):
            continue
        if p.type == "float":
            chosen[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            chosen[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            chosen[name] = trial.suggest_categorical(name, p.choices)
    return chosen


_MISSING = object()


def _matches(value: Any, want: Any) -> bool:
    if value is _MISSING:
        return False
    return value in want if isinstance(want, list) else value == want
