"""`harness run <task> seeds=N` (or `seeds=[1,2,3]`): the same config once per seed, as nested runs under one parent
run, and what the seeds say together.

For every metric the parent run logs the mean over seeds, the standard deviation across seeds, and a 95% interval
that accounts for both sources of variation — which seed was drawn and which test examples were drawn — from a
two-level bootstrap (seeds resampled, and the test examples resampled jointly for all seeds, the metric recomputed
from each seed run's logged predictions). It also logs the two parts on their own (`_seed_std`: across seeds;
`_sampling_std`: over test resamples with the seeds fixed), and the console says which one dominates. The same
command run again goes on where it stopped: seeds already finished are not run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from harness.config import TaskSpec, flatten, parse_override, resolve_run_config
from harness.errors import ConfigError
from harness.metrics import paired

SEEDS_KEY = "seeds"


def parse_seeds(value: Any, base_seed: int) -> list[int]:
    """`seeds=3` -> [base, base+1, base+2]; `seeds=[1,5,9]` -> those."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(
            f"seeds={value!r}: give a number of seeds or a list of seeds", "e.g. seeds=3 or seeds=[1,2,3]"
        )
    if isinstance(value, int):
        if value < 2:
            raise ConfigError(f"seeds={value}: a seed study needs at least 2 seeds", "e.g. seeds=3")
        return [base_seed + i for i in range(value)]
    if (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        if len(set(value)) != len(value):
            raise ConfigError(f"seeds={value}: a seed is listed twice", "list distinct seeds")
        return list(value)
    raise ConfigError(
        f"seeds={value!r}: give a number of seeds (at least 2) or a list of seeds", "e.g. seeds=3 or seeds=[1,2,3]"
    )


def split_seeds(overrides: list[str]) -> tuple[Optional[Any], list[str]]:
    """The `seeds=` value, if any, and the other overrides."""
    value, rest = None, []
    for item in overrides:
        key, v = parse_override(item)
        if key == SEEDS_KEY:
            value = v
        else:
            rest.append(item)
    return value, rest


@dataclass
class SeedSummary:
    metric: str
    values: list[float]  # per seed
    mean: float
    seed_std: float
    sampling_std: float
    ci_low: float
    ci_high: float

    @property
    def dominant(self) -> str:
        return "seed variation" if self.seed_std > self.sampling_std else "test-set sampling"


def run_seeds(task: TaskSpec, value: Any, overrides: list[str], console: Any = None) -> list[SeedSummary]:
    from harness.run.runner import run
    from harness.tracking.parent import ParentRun
    from harness.tracking.store import check_store

    base = resolve_run_config(task, overrides)
    seeds = parse_seeds(value, base.seed)
    say = (lambda t: console.print(t, highlight=False)) if console is not None else (lambda t: None)
    check_store(base.tracking.uri)
    settings = {k: v for k, v in flatten(base.model_dump(mode="json")).items() if k != "seed"}
    key = hashlib.sha256(json.dumps([task.name, settings, seeds], sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]
    parent = ParentRun(base.tracking.uri, base.tracking.experiment or task.name)
    parent.open(
        key,
        f"{task.name}-{base.model.name.rstrip('/').split('/')[-1]}-seeds-{len(seeds)}",
        tags={
            "mode": "seeds",
            "task": task.name,
            "family": task.family,
            "model": base.model.name,
            "seeds": json.dumps(seeds),
            "profile": base.profile,
        },
        params={
            "seeds": json.dumps(seeds),
            **{f"config.{k}": v for k, v in settings.items() if not k.startswith("tracking.")},
        },
    )
    say(
        f"[bold]{task.name}[/] · {len(seeds)} seeds {seeds} · parent run {parent.run_id}"
        + (" (resumed)" if parent.resumed else "")
    )
    try:
        for s in seeds:
            if parent.finished_child("seed", str(s)) is not None:
                say(f"seed {s}: finished earlier, not run again")
                continue
            cfg = resolve_run_config(task, [*overrides, f"seed={s}"])
            cfg.tracking.tags = {**cfg.tracking.tags, **parent.child_tags(seed=str(s))}
            say(f"seed {s}:")
            run(cfg, task, console=console)
        summaries = summarize(task, parent, seeds, base.eval.bootstrap_resamples, base.eval.confidence)
        _log(parent, summaries)
        _describe_data(parent, parent.finished_child("seed", str(seeds[0])))
        _print(say, summaries, task)
    except KeyboardInterrupt:
        parent.close("KILLED")
        raise
    except BaseException as e:
        parent.close("FAILED", getattr(e, "message", None) or f"{type(e).__name__}: {e}")
        raise
    parent.close("FINISHED")
    return summaries


def summarize(task: TaskSpec, parent: Any, seeds: list[int], resamples: int, confidence: float) -> list[SeedSummary]:
    from harness.commands.systems import family_arrays, predictions_table

    runs = [parent.finished_child("seed", str(s)) for s in seeds]
    built = [family_arrays(task, predictions_table(parent.client, r), r, None) for r in runs]
    metrics = built[0][1]
    arrays = [b[0] for b in built]
    n = len(built[0][2])
    rng = np.random.default_rng(0)
    idx = rng.choice(n, size=(resamples, n), replace=True)
    picks = rng.integers(0, len(seeds), size=(resamples, len(seeds)))
    out = []
    for m in metrics:
        values = [m.score(a) for a in arrays]
        both = np.array([np.mean([m.score(paired.take(arrays[k], i)) for k in p]) for i, p in zip(idx, picks)])
        sampling = np.array([np.mean([m.score(paired.take(a, i)) for a in arrays]) for i in idx])
        lo, hi = paired.interval(both, confidence)
        out.append(
            SeedSummary(
                m.name,
                values,
                float(np.mean(values)),
                float(np.std(values, ddof=1)),
                float(np.std(sampling, ddof=1)),
                lo,
                hi,
            )
        )
    return out


def _describe_data(parent: Any, child: Any) -> None:
    """What the seeds were tested on (all on the same examples), as a single run would say it."""
    parent.set_tags(
        {k: v for k, v in child.data.tags.items() if k in ("data.subset", "data.official_split", "main_metric")}
    )
    for key in ("split.test.rows", "split.test.digest"):
        if key in child.data.params and key not in parent.client.get_run(parent.run_id).data.params:
            parent.client.log_param(parent.run_id, key, child.data.params[key])


def _log(parent: Any, summaries: list[SeedSummary]) -> None:
    metrics, tags = {}, {}
    for s in summaries:
        p = f"test_{s.metric}"
        metrics.update(
            {
                f"{p}_mean": s.mean,
                f"{p}_seed_std": s.seed_std,
                f"{p}_sampling_std": s.sampling_std,
                f"{p}_ci_low": s.ci_low,
                f"{p}_ci_high": s.ci_high,
            }
        )
        tags[f"seeds.{s.metric}.dominant"] = s.dominant
    parent.log_metrics(metrics)
    parent.set_tags(tags)


def _print(say: Callable[[str], None], summaries: list[SeedSummary], task: TaskSpec) -> None:
    n = len(summaries[0].values) if summaries else 0
    say(
        f"\n{task.name} over {n} seeds: mean, 95% interval (seeds and test examples resampled), the spread across "
        "seeds, the spread from test sampling alone"
    )
    for s in summaries:
        say(
            f"  {s.metric:<12} {s.mean:.4f} [{s.ci_low:.4f}, {s.ci_high:.4f}] · seed std {s.seed_std:.4f} · "
            f"sampling std {s.sampling_std:.4f} · {s.dominant} dominates · per seed "
            + ", ".join(f"{v:.4f}" for v in s.values)
        )
