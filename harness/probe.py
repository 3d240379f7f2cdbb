"""`harness probe <name|all> --model M | --run RUN_ID`: bias probes as MLflow runs.

Each probe run logs its settings and model, overall and per-category metrics with bootstrap intervals
(`<category>/<metric>` with `_ci_low` / `_ci_high`), the per-example table (`probe/<name>/examples.json`), the
per-category table (`probe/<name>/categories.json`) and a bar chart with intervals (`plots/<name>.png`). With
`--run`, the model is the one that run logged, the probe run goes into that run's experiment and is nested under it
(tag `mlflow.parentRunId`, and `harness.model_run_id`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness.config import default_tracking_uri
from harness.errors import ConfigError, DataError, HarnessError, ModelError
from harness.probes.base import LM, ProbeSpec, Settings, all_specs, bar_figure, load_lm, probe_module


def _data_dir(explicit: Optional[str]) -> Optional[Path]:
    d = explicit or os.environ.get("HARNESS_DATA_DIR")
    return Path(d).expanduser().resolve() if d else None


def resolve_probes(name: str, lm_kind: Optional[str]) -> list[ProbeSpec]:
    specs = all_specs()
    if name == "all":
        chosen = [s for s in specs.values() if lm_kind is None or lm_kind in s.fits]
        if not chosen:
            raise ModelError(f"no probe fits a {lm_kind} model", f"probes: {', '.join(sorted(specs))}")
        return chosen
    if name not in specs:
        raise ConfigError(f"unknown probe '{name}'", f"use one of: {', '.join(sorted(specs))}, or all")
    spec = specs[name]
    if lm_kind is not None and lm_kind not in spec.fits:
        fit = [n for n, s in specs.items() if lm_kind in s.fits]
        raise ModelError(
            f"probe '{name}' does not fit a {lm_kind} model (it scores {' or '.join(spec.fits)} models)",
            f"probes that fit a {lm_kind} model: {', '.join(fit) or 'none'}",
        )
    return [spec]


def probe(
    name: str,
    model: Optional[str],
    run_id: Optional[str],
    *,
    data_dir: Optional[str] = None,
    data: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    settings: Optional[Settings] = None,
    console: Any = None,
    parent_run: Optional[str] = None,
    experiment_id: Optional[str] = None,
    extra_tags: Optional[dict[str, str]] = None,
) -> list[dict[str, Any]]:
    """Run probe `name` (or `all` that fit) on a model (`model`, or the one MLflow run `run_id` logged). Each probe is
    one MLflow run: nested under `run_id`'s run, or under `parent_run` (a suite) with `extra_tags`."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness.runtime import configure_runtime
    from harness.tracking.env import package_versions

    s = settings or Settings()
    from harness.tracking.store import check_store

    uri = tracking_uri or default_tracking_uri()
    check_store(uri)
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    say = (lambda t: console.print(t, highlight=False)) if console is not None else (lambda t: None)
    if (model is None) == (run_id is None):
        raise ConfigError("give exactly one of --model and --run", "e.g. --model HuggingFaceTB/SmolLM2-135M-Instruct")
    parent = None
    if run_id is not None:
        try:
            parent = client.get_run(run_id)
        except MlflowException:
            raise ModelError(
                f"MLflow run '{run_id}' not found in {uri}",
                "check the run id (harness prints it at the end of a run) and MLFLOW_TRACKING_URI",
            ) from None
        model = f"runs:/{run_id}"
    if data and name == "all":
        raise ConfigError("--data names the files of one probe", "run one probe with --data, or drop --data")
    resolve_probes(name, None)  # an unknown name fails before the model loads
    import lightning as L

    from harness.config import RunConfig

    configure_runtime(RunConfig(task="probe"))
    L.seed_everything(s.seed, verbose=False)
    lm = load_lm(model, cache=Path(".harness") / "models")
    specs = resolve_probes(name, lm.kind)
    if name == "all":
        skipped = sorted(set(all_specs()) - {sp.name for sp in specs})
        if skipped:
            say(f"[yellow]skipping[/] {', '.join(skipped)}: they do not fit a {lm.kind} model")
    experiment = experiment_id or (parent.info.experiment_id if parent else _experiment(client, "probes"))
    place = Place(client, experiment, parent, parent_run, dict(extra_tags or {}), package_versions())
    return [_one(spec, lm, place, s, _data_dir(data_dir), Path(data) if data else None, say) for spec in specs]


@dataclass
class Place:
    """Where a probe's run goes: the store, the experiment, what it is nested under, the tags it carries."""

    client: Any
    experiment: str
    model_run: Any  # the run whose model is probed (its probe runs nest under it), or None
    parent_run: Optional[str]  # a suite's parent run, which the probe runs nest under instead
    tags: dict[str, str]
    versions: dict[str, str]


def _experiment(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def _one(
    spec: ProbeSpec, lm: LM, place: Place, s: Settings, data_dir: Optional[Path], override: Optional[Path], say: Any
) -> dict[str, Any]:
    """One probe as one MLflow run: FINISHED with its results, FAILED with the error, KILLED on Ctrl-C."""
    started = time.perf_counter()
    client = place.client
    rid = _open_run(place, spec, lm)
    try:
        mod = probe_module(spec)
        rows, warnings = mod.load(spec, data_dir, override)
        if not rows:
            raise DataError(f"probe '{spec.name}': no usable examples", "check the probe's data files")
        if s.limit:
            rows = mod.subset(rows, s.limit, s.seed) if hasattr(mod, "subset") else rows[: s.limit]
            client.set_tag(rid, "probe.subset", f"limit {s.limit}")
        for w in warnings:
            say(f"[yellow]note:[/] {w}")
        params = {
            "probe": spec.name,
            "model": lm.ref,
            "examples": len(rows),
            "batch_size": s.batch_size,
            "bootstrap_resamples": s.resamples,
            "confidence": s.confidence,
            "seed": s.seed,
            "limit": s.limit,
            **{f"option.{k}": v for k, v in spec.options.items()},
        }
        for k, v in params.items():
            client.log_param(rid, k, str(v))
        say(f"[bold]{spec.name}[/] · {len(rows):,} examples · {lm.kind} model {lm.ref}")
        res = mod.evaluate(lm, rows, spec, s)
        _log_result(client, rid, spec, lm, res, warnings + res.notes)
        client.set_tag(rid, "wall_seconds", f"{time.perf_counter() - started:.1f}")
        client.set_terminated(rid, "FINISHED")
        _print(say, spec, res, rid)
        return {"probe": spec.name, "run_id": rid, "result": res}
    except KeyboardInterrupt:
        client.set_terminated(rid, "KILLED")
        raise
    except BaseException as e:
        msg = str(e) if isinstance(e, HarnessError) else f"{e.__class__.__name__}: {e}"
        client.set_tag(rid, "error", msg[:4900])
        client.set_terminated(rid, "FAILED")
        raise


def _open_run(place: Place, spec: ProbeSpec, lm: LM) -> str:
    tags = {
        "probe": spec.name,
        "main_metric": spec.main_metric,
        "model": lm.ref,
        "model.kind": lm.kind,
        "model.source": lm.source,
        "mode": "probe",
        **{f"version.{k}": v for k, v in place.versions.items()},
    }
    if place.model_run is not None:
        tags.update(
            {"mlflow.parentRunId": place.model_run.info.run_id, "harness.model_run_id": place.model_run.info.run_id}
        )
    elif lm.run_id:
        tags["harness.model_run_id"] = lm.run_id
    if place.parent_run:
        tags["mlflow.parentRunId"] = place.parent_run
    tags.update(place.tags)
    return place.client.create_run(place.experiment, run_name=f"probe-{spec.name}", tags=tags).info.run_id


def _log_result(client: Any, rid: str, spec: ProbeSpec, lm: LM, res: Any, notes: list[str]) -> None:
    """Metrics with their intervals (a NaN from an empty group is left out), the tables and the bar chart."""
    import matplotlib.pyplot as plt

    from harness.tracking.mlflow_run import temp_dir

    if notes:
        client.set_tag(rid, "probe.notes", " | ".join(notes)[:4900])
    metrics = {}
    for key, est in res.estimates.items():
        safe = key.replace(":", "_").replace(" ", "_")
        metrics.update({k: v for k, v in est.as_dict(safe).items() if v == v})
    metrics.update(res.scalars)
    for k, v in metrics.items():
        client.log_metric(rid, k, float(v))
    with temp_dir() as tmp:
        for what, frame in (("examples", res.table), ("categories", res.categories)):
            p = Path(tmp) / f"{what}.json"
            frame.to_json(p, orient="split", index=False, force_ascii=False)
            client.log_artifact(rid, str(p), f"probe/{spec.name}")
        fig = bar_figure(res.categories, res.main_metric, f"{spec.name} · {lm.ref}", res.ideal)
        p = Path(tmp) / f"{spec.name}.png"
        fig.savefig(p)
        plt.close(fig)
        client.log_artifact(rid, str(p), "plots")


def _print(say: Any, spec: ProbeSpec, res: Any, run_id: str) -> None:
    cat = res.categories
    metrics = list(cat["metric"].drop_duplicates())
    say(f"  {'category':28}" + "".join(f"{m:>26}" for m in metrics) + f"{'n':>7}")
    for name in cat["category"].drop_duplicates():
        cells = []
        for m in metrics:
            r = cat[(cat["category"] == name) & (cat["metric"] == m)]
            cells.append(
                f"{r.value.iloc[0]:8.3g} [{r.ci_low.iloc[0]:6.3g}, {r.ci_high.iloc[0]:6.3g}]" if len(r) else ""
            )
        row = cat[cat["category"] == name].iloc[0]
        extra = f"   Wilcoxon p={row['wilcoxon_p']:.2g}" if "wilcoxon_p" in cat.columns else ""
        say(f"  {name:28}" + "".join(f"{c:>26}" for c in cells) + f"{row['n']:>7}" + extra)
    for ref in spec.references:
        say(f"  published: {ref.metric} {ref.value:g} — {ref.model} ({ref.source})")
    say(f"MLflow run {run_id}")
