"""`harness suite <name> [--model M] [key=value ...]`: several tasks (and probes) as one MLflow parent run.

A suite is `suites/<name>.yaml`:

    description: ...
    model: sentence-transformers/all-MiniLM-L6-v2   # optional: the model of every entry that names none
    config: {data: {test_size: 500}}                # optional: overrides for every task entry
    entries:
      - {name: imdb, task: imdb}
      - {name: sst2, task: sst2, config: {seed: 7}}
      - {name: imdb-on-sst2, task: sst2, model: "@imdb", train: false}   # the model the imdb entry trained
      - {name: crows-pairs, probe: crows_pairs}

Each entry is a run nested under the suite's parent run (a probe entry: its probe run). An entry that fails is
marked FAILED and the others still run; the same command run again skips the entries that finished and runs the
rest. The parent run logs every entry's main metric with its interval (`<entry>.<metric>` and `_ci_low` /
`_ci_high`) and `suite/summary.json` / `suite/summary.md`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, ValidationError, model_validator

from harness.config import Strict, error_text, flatten, load_yaml, redact_uri
from harness.errors import ConfigError, HarnessError, RunFailed

SUITES_PATH_ENV = "HARNESS_SUITES_PATH"
REF = "@"  # model: "@<entry>": the model another entry of this suite trained


class Entry(Strict):
    name: str
    task: Optional[str] = None
    probe: Optional[str] = None
    model: Optional[str] = None
    train: bool = True
    config: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_kind(self) -> Entry:
        if (self.task is None) == (self.probe is None):
            raise ValueError(f"entry '{self.name}' needs exactly one of `task` and `probe`")
        return self


class SuiteSpec(Strict):
    name: str
    description: str
    model: Optional[str] = None
    config: dict[str, Any] = {}
    entries: list[Entry] = Field(min_length=1)
    path: Optional[str] = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> SuiteSpec:
        names = [e.name for e in self.entries]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"entry names must be unique ({', '.join(sorted(dup))} repeated)")
        for i, e in enumerate(self.entries):
            if e.model and e.model.startswith(REF):
                target = e.model[len(REF) :]
                if target not in names[:i]:
                    raise ValueError(f"entry '{e.name}': model '{e.model}' must name an earlier task entry")
                if self.entries[names.index(target)].task is None:
                    raise ValueError(f"entry '{e.name}': '{target}' is a probe; only task entries train models")
        return self


def suite_dirs() -> list[Path]:
    from harness.paths import project_root

    dirs = [project_root() / "suites"]
    dirs += [Path(p).expanduser().resolve() for p in os.environ.get(SUITES_PATH_ENV, "").split(os.pathsep) if p]
    return dirs


def all_suites() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in suite_dirs():
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            found.setdefault(p.stem, p)
    return found


def load_suite(name: str) -> SuiteSpec:
    from harness.families.registry import registry
    from harness.probes.base import all_specs

    suites = all_suites()
    if name not in suites:
        raise ConfigError(
            f"unknown suite '{name}'",
            f"known suites: {', '.join(sorted(suites)) or '(none)'} (files in suites/, or {SUITES_PATH_ENV})",
        )
    path = suites[name]
    data = load_yaml(path)
    data.setdefault("name", name)
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{path}: field '{loc}': {error_text(err)}", "fix the suite file") from None
    spec.path = str(path)
    tasks, probes = registry(), all_specs()
    for e in spec.entries:
        if e.task is not None and e.task not in tasks:
            raise ConfigError(
                f"{path}: entry '{e.name}' names unknown task '{e.task}'", f"known tasks: {', '.join(sorted(tasks))}"
            )
        if e.probe is not None and e.probe not in probes:
            raise ConfigError(
                f"{path}: entry '{e.name}' names unknown probe '{e.probe}'",
                f"known probes: {', '.join(sorted(probes))}",
            )
    return spec


@dataclass
class Outcome:
    entry: str
    kind: str  # task | probe
    status: str  # FINISHED | FAILED | SKIPPED (finished earlier)
    run_id: Optional[str]
    metric: Optional[str] = None
    value: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    error: Optional[str] = None


def run_suite(name: str, model: Optional[str], overrides: list[str], console: Any = None) -> list[Outcome]:
    from harness.config import default_tracking_uri, parse_override
    from harness.tracking.parent import ParentRun
    from harness.tracking.store import check_store

    spec = load_suite(name)
    say = (lambda t: console.print(t, highlight=False)) if console is not None else (lambda t: None)
    uri = default_tracking_uri()
    for item in overrides:
        key, value = parse_override(item)
        if key == "tracking.tracking_uri":
            uri = str(value)
    check_store(uri)
    key = hashlib.sha256(
        json.dumps([spec.model_dump(mode="json"), model, overrides], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    parent = ParentRun(uri, "suites")
    parent.open(
        key,
        f"suite-{spec.name}" + (f"-{model.rstrip('/').split('/')[-1]}" if model else ""),
        tags={"mode": "suite", "suite": spec.name, **({"model": model} if model else {})},
        params={
            "suite": spec.name,
            "suite.file": spec.path or "",
            "model": model or "(each task's own)",
            "overrides": " ".join(o for o in overrides if "tracking_uri" not in o)[:5000],
            "entries": ",".join(e.name for e in spec.entries),
        },
    )
    say(
        f"[bold]suite {spec.name}[/] · {len(spec.entries)} entries · parent run {parent.run_id} in experiment "
        f"'suites' ({redact_uri(uri)})" + (" (resumed)" if parent.resumed else "")
    )
    outcomes: list[Outcome] = []
    try:
        for entry in spec.entries:
            outcomes.append(_entry(spec, entry, model, overrides, parent, outcomes, say, console))
    except KeyboardInterrupt:
        parent.close("KILLED")
        raise
    _summarize(parent, spec, outcomes, say)
    failed = [o for o in outcomes if o.status == "FAILED"]
    if failed:
        msg = f"{len(failed)} of {len(outcomes)} suite entries failed: " + "; ".join(
            f"{o.entry}: {o.error}" for o in failed
        )
        parent.close("FAILED", msg)
        raise RunFailed(msg[:2000], "see their runs in MLflow; the same command runs only what did not finish")
    parent.close("FINISHED")
    return outcomes


def _entry(
    spec: SuiteSpec,
    entry: Entry,
    model: Optional[str],
    overrides: list[str],
    parent: Any,
    done: list[Outcome],
    say: Any,
    console: Any,
) -> Outcome:
    kind = "task" if entry.task else "probe"
    earlier = parent.finished_child("suite.entry", entry.name)
    if earlier is not None:
        say(f"[bold]{entry.name}[/]: finished earlier (run {earlier.info.run_id}), not run again")
        return _outcome(entry, kind, "SKIPPED", earlier)
    say(f"[bold]{entry.name}[/] ({kind} {entry.task or entry.probe})")
    try:
        run = (
            _run_task(spec, entry, model, overrides, parent, done, console)
            if entry.task
            else _run_probe(spec, entry, model, overrides, parent, done, console)
        )
        return _outcome(entry, kind, "FINISHED", run)
    except HarnessError as e:
        say(f"[red]{entry.name} failed:[/] {e.message}")
        return Outcome(entry.name, kind, "FAILED", None, error=e.message)
    except Exception as e:  # a bug in one entry must not lose the others' results; it is reported, with its type
        say(f"[red]{entry.name} failed:[/] {type(e).__name__}: {e}")
        return Outcome(entry.name, kind, "FAILED", None, error=f"{type(e).__name__}: {e}")


def _model_for(spec: SuiteSpec, entry: Entry, model: Optional[str], done: list[Outcome]) -> Optional[str]:
    wanted = entry.model or model or spec.model
    if wanted and wanted.startswith(REF):
        target = next((o for o in done if o.entry == wanted[len(REF) :]), None)
        if target is None or target.run_id is None:
            raise ConfigError(
                f"entry '{entry.name}' uses the model of '{wanted[len(REF) :]}', which did not finish",
                "fix that entry first; the same command then runs this one",
            )
        return f"runs:/{target.run_id}"
    return wanted


def _references(spec: SuiteSpec, entry: Entry) -> bool:
    return any(e.model == f"{REF}{entry.name}" for e in spec.entries)


def _run_task(
    spec: SuiteSpec,
    entry: Entry,
    model: Optional[str],
    overrides: list[str],
    parent: Any,
    done: list[Outcome],
    console: Any,
) -> Any:
    from harness.config import resolve_run_config
    from harness.families.registry import get_task
    from harness.run.runner import run

    task = get_task(entry.task or "")
    items = [
        f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
        for k, v in flatten({**spec.config, **entry.config}).items()
    ]
    # the entry's own model and training beat the command line's; --model and the suite's model do not
    own = [
        *([f"model.name={_model_for(spec, entry, None, done)}"] if entry.model else []),
        f"train={str(entry.train).lower()}",
    ]
    if not entry.model and (model or spec.model):
        items.append(f"model.name={model or spec.model}")
    if _references(spec, entry):
        own.append("log_model=true")  # a later entry evaluates this model
    cfg = resolve_run_config(task, [*items, *overrides, *own])
    cfg.tracking.tags = {**cfg.tracking.tags, **parent.child_tags(**{"suite": spec.name, "suite.entry": entry.name})}
    result = run(cfg, task, console=console)
    return parent.client.get_run(result.run_id)


def _run_probe(
    spec: SuiteSpec,
    entry: Entry,
    model: Optional[str],
    overrides: list[str],
    parent: Any,
    done: list[Outcome],
    console: Any,
) -> Any:
    from harness.commands.probe import probe

    chosen = _model_for(spec, entry, model, done) or "HuggingFaceTB/SmolLM2-135M-Instruct"
    results = probe(
        entry.probe or "",
        chosen,
        None,
        tracking_uri=parent.uri,
        console=console,
        parent_run=parent.run_id,
        experiment_id=parent.experiment_id,
        extra_tags={"suite": spec.name, "suite.entry": entry.name},
    )
    return parent.client.get_run(results[0]["run_id"])


def _outcome(entry: Entry, kind: str, status: str, run: Any) -> Outcome:
    if run is None:
        return Outcome(entry.name, kind, "FAILED", None, error="its run was not found after it finished")
    tags, metrics = run.data.tags, run.data.metrics
    main = tags.get("main_metric")
    prefix = "test_" if kind == "task" else ""
    value = metrics.get(f"{prefix}{main}") if main else None
    return Outcome(
        entry.name,
        kind,
        status,
        run.info.run_id,
        main,
        value,
        metrics.get(f"{prefix}{main}_ci_low"),
        metrics.get(f"{prefix}{main}_ci_high"),
    )


def _summarize(parent: Any, spec: SuiteSpec, outcomes: list[Outcome], say: Any) -> None:
    import tempfile

    rows = [o.__dict__ for o in outcomes]
    metrics = {}
    for o in outcomes:
        if o.value is not None:
            metrics[f"{o.entry}.{o.metric}"] = o.value
            if o.ci_low is not None:
                metrics.update({f"{o.entry}.{o.metric}_ci_low": o.ci_low, f"{o.entry}.{o.metric}_ci_high": o.ci_high})
    parent.log_metrics(metrics)
    lines = ["| entry | kind | status | main metric | value [95% CI] | run |", "|---|---|---|---|---|---|"]
    say(f"\nsuite {spec.name}:")
    for o in outcomes:
        shown = (
            f"{o.value:.4f} [{o.ci_low:.4f}, {o.ci_high:.4f}]"
            if o.value is not None and o.ci_low is not None
            else f"{o.value:.4f}"
            if o.value is not None
            else "-"
        )
        lines.append(f"| {o.entry} | {o.kind} | {o.status} | {o.metric or '-'} | {shown} | {o.run_id or '-'} |")
        say(f"  {o.entry:<22} {o.status:<9} {o.metric or '-':<14} {shown:<30} {o.run_id or o.error or ''}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "suite"
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(rows, indent=2))
        (folder / "summary.md").write_text("\n".join(lines) + "\n")
        parent.log_artifact_dir(tmp)
