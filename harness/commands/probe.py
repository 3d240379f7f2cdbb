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
        total = len(rows)
        if s.limit:
            rows = mod.subset(rows, s.limit, s.seed) if hasattr(mod, "subset") else rows[: s.limit]
            client.set_tag(rid, "probe.subset", f"limit {s.limit}: {len(rows):,} of {total:,} examples")
        for w in warnings:
            say(f"[yellow]note:[/] {w}")
        _log_provenance(place, rid, spec, s, lm, sources(spec, mod, data_dir, override), len(rows), total)
        of = f" of {total:,}" if len(rows) < total else ""
        say(f"[bold]{spec.name}[/] · {len(rows):,}{of} examples · {lm.kind} model {lm.ref}")
        res = mod.evaluate(lm, rows, spec, s)
        _log_result(client, rid, spec, lm, res, warnings + res.notes)
        client.set_tag(rid, "wall_seconds", f"{time.perf_counter() - started:.1f}")
        client.set_terminated(rid, "FINISHED")
        facts = {"subset": len(rows) < total, "test_file": str(override) if override else None}
        _print(say, spec, res, facts)
        _say_open_it(say, place, rid)
        return {"probe": spec.name, "run_id": rid, "result": res}
    except KeyboardInterrupt:
        client.set_terminated(rid, "KILLED")
        raise
    except BaseException as e:
        msg = str(e) if isinstance(e, HarnessError) else f"{e.__class__.__name__}: {e}"
        client.set_tag(rid, "error", msg[:4900])
        client.set_terminated(rid, "FAILED")
        raise


def sources(spec: ProbeSpec, mod: Any, data_dir: Optional[Path], override: Optional[Path]) -> list[str]:
    """What the probe's rows were read from: its files (the user's with --data), else its templates, else the hub."""
    from harness.probes.base import data_paths

    if override is not None:
        o = override.expanduser().resolve()
        return [str(o)] if o.is_file() else sorted(str(p) for p in o.iterdir() if p.is_file())
    paths = data_paths(spec, data_dir)
    if not paths and data_dir is not None and spec.data.local_dir and (data_dir / spec.data.local_dir).is_dir():
        paths = sorted(p for p in (data_dir / spec.data.local_dir).iterdir() if p.is_file())
    if paths:
        return [str(p) for p in paths]
    templates = getattr(mod, "TEMPLATES", None)
    if templates is not None:
        return [str(templates)]
    return [f"hf://datasets/{spec.data.hub_id}"] if spec.data.hub_id else []


def _log_provenance(
    place: Place, rid: str, spec: ProbeSpec, s: Settings, lm: LM, files: list[str], used: int, total: int
) -> None:
    """What a task run records too: settings (params and config/resolved.yaml), the dataset input with the sha256 of
    every file read, environment.json, git commit, device."""
    import hashlib
    import json

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Param, RunTag

    from harness.config import dump_yaml
    from harness.data.sources import file_sha256
    from harness.tracking import env
    from harness.tracking.journal import send_input
    from harness.tracking.mlflow_run import temp_dir

    client = place.client
    sha = {f: file_sha256(Path(f)) for f in files if Path(f).is_file()}
    settings = {
        "probe": spec.name,
        "model": lm.ref,
        "examples": used,
        "examples_total": total,
        "batch_size": s.batch_size,
        "bootstrap_resamples": s.resamples,
        "confidence": s.confidence,
        "seed": s.seed,
        "limit": s.limit,
        **{f"option.{k}": v for k, v in spec.options.items()},
    }
    client.log_batch(rid, params=[Param(k, str(v)[:6000]) for k, v in settings.items()])
    digest = hashlib.sha256(json.dumps([sorted(sha.items()), used, s.limit, s.seed]).encode()).hexdigest()[:16]
    if files and not files[0].startswith("hf://"):
        source: Any = LocalArtifactDatasetSource(Path(files[0]).parent.as_uri())
    else:
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        source = HuggingFaceDatasetSource(path=spec.data.hub_id or spec.name, split=spec.data.hub_split)
    ds = MetaDataset(source=source, name=f"{spec.name}-examples", digest=digest)
    tags = {
        "files": ", ".join(Path(f).name for f in files)[:4000],
        "sha256": ", ".join(f"{Path(f).name}:{h}" for f, h in sha.items())[:4000],
        "rows": str(used),
        "source_rows": str(total),
    }
    send_input(client, rid, ds._to_mlflow_entity().to_dictionary(), "test", tags)
    git = env.git_state()
    device = str(next(lm.model.parameters()).device)
    run_tags = {"device": device, "data.subset": str(used < total).lower(), "data.digest": digest}
    if git.get("commit"):
        run_tags.update({"mlflow.source.git.commit": git["commit"], "git.dirty": str(git["dirty"]).lower()})
    client.log_batch(rid, tags=[RunTag(k, v) for k, v in run_tags.items()])
    with temp_dir() as tmp:
        (Path(tmp) / "environment.json").write_text(
            json.dumps({"packages": place.versions, "git": git, "device": device, **env.device_info()}, indent=2)
        )
        client.log_artifact(rid, str(Path(tmp) / "environment.json"))
        cfg = Path(tmp) / "resolved.yaml"
        cfg.write_text(dump_yaml({"probe": spec.model_dump(mode="json"), "settings": settings, "files": sha}))
        client.log_artifact(rid, str(cfg), "config")


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
    categories = res.categories.assign(too_few=res.categories["n"] < FEW)  # marked, as on the console
    with temp_dir() as tmp:
        for what, frame in (("examples", res.table), ("categories", categories)):
            p = Path(tmp) / f"{what}.json"
            frame.to_json(p, orient="split", index=False, force_ascii=False)
            client.log_artifact(rid, str(p), f"probe/{spec.name}")
        fig = bar_figure(res.categories, res.main_metric, f"{spec.name} · {lm.ref}", res.ideal)
        p = Path(tmp) / f"{spec.name}.png"
        fig.savefig(p)
        plt.close(fig)
        client.log_artifact(rid, str(p), "plots")


FEW = 10  # a category with fewer examples is marked: its interval is too wide to read


def _print(say: Any, spec: ProbeSpec, res: Any, facts: dict[str, Any]) -> None:
    """The per-category table (categories with fewer than FEW examples marked), what the main metric means and where
    the result stands against the ideal and chance, and each published number with the comparability verdict."""
    from harness.commands.report import comparability_reasons, verdict

    cat = res.categories
    metrics = list(cat["metric"].drop_duplicates())
    say(f"  {'category':28}" + "".join(f"{m:>26}" for m in metrics) + f"{'n':>7}")
    few = []
    for name in cat["category"].drop_duplicates():
        cells = []
        for m in metrics:
            r = cat[(cat["category"] == name) & (cat["metric"] == m)]
            cells.append(
                f"{r.value.iloc[0]:8.3g} [{r.ci_low.iloc[0]:6.3g}, {r.ci_high.iloc[0]:6.3g}]" if len(r) else ""
            )
        row = cat[cat["category"] == name].iloc[0]
        extra = f"   Wilcoxon p={row['wilcoxon_p']:.2g}" if "wilcoxon_p" in cat.columns else ""
        mark = " *" if int(row["n"]) < FEW else ""
        if mark:
            few.append(name)
        say(f"  {name:28}" + "".join(f"{c:>26}" for c in cells) + f"{row['n']:>7}{mark}" + extra)
    if few:
        say(f"  * fewer than {FEW} examples: too few to read ({', '.join(few)})")
    if spec.reading:
        say(f"  reading: {spec.reading}")
    overall = res.estimates.get(res.main_metric)
    if spec.ideal is not None and overall is not None:
        inside = overall.low <= spec.ideal <= overall.high
        where = "inside its interval (not distinguishable from unbiased)" if inside else "outside its interval"
        say(f"  ideal: {res.main_metric} {spec.ideal:g} (unbiased); overall {overall.value:.3g}: the ideal is {where}")
    for metric, chance in spec.chance.items():
        est = res.estimates.get(metric)
        if est is not None and metric != res.main_metric:
            level = (
                "at chance (inside its interval)"
                if est.low <= chance <= est.high
                else ("below chance" if est.high < chance else "above chance")
            )
            say(f"  chance: {metric} {chance:g}; overall {est.value:.3g} [{est.low:.3g}, {est.high:.3g}]: {level}")
    for ref in spec.references:
        reasons = comparability_reasons(ref, spec, official=True, rouge_engines=set(), **facts)
        if facts.get("subset"):
            reasons = [r.replace("a subset of the test split", "a subset of the probe's examples") for r in reasons]
        say(f"  published: {ref.metric} {ref.value:g} — {ref.model} ({ref.source}) ({verdict(reasons)})")


def _say_open_it(say: Any, place: Place, run_id: str) -> None:
    """The run's experiment and the link that opens it, as a task run ends."""
    from harness.config import redact_uri
    from harness.tracking import links

    uri = place.client.tracking_uri
    name = place.client.get_experiment(place.experiment).name
    say(f"MLflow run {run_id} in experiment '{name}' ({redact_uri(uri)})")
    say(f"open it: {links.open_hint(uri)}{links.run_url(links.ui_base(uri), place.experiment, run_id)}")
