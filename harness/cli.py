"""`harness` command line: thin parsing, then the runner.

harness run <task> [key=value ...]                 fine-tune and evaluate (one MLflow run)
harness eval <task> --model M [--data F] [k=v ...] evaluate a trained model without training (its own run)
harness score <task> --predictions F [--gold G] [--na-probs N] [--json]
                                                   score a predictions file (official SQuAD EM/F1)
harness tune <task> [--trials N] [--workers W] [--space S] [--study NAME] [--storage URL] [k=v ...]
                                                   Optuna search, trials as nested MLflow runs
harness check <task> [key=value ...]               load the task's data as a run would, report it, train nothing
harness ls                                         tasks with family, dataset and metrics
harness validate                                   check every task file and profile
harness config <task> [key=value ...]              print the resolved config
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from harness.errors import ConfigError, user_error


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    quiet = bool(os.environ.get("CI"))
    return Console(stderr=stderr, highlight=False, soft_wrap=True, force_terminal=False if quiet else None)


def _print_task_dirs() -> None:
    from harness.paths import TASKS_PATH_ENV, task_dirs

    dirs = task_dirs()
    print(f"task folders ({len(dirs)}; add yours with {TASKS_PATH_ENV}=dir1:dir2):")
    for d in dirs:
        print(f"  {d}" + ("" if d.is_dir() else "  (missing)"))


def cmd_ls(args: argparse.Namespace) -> int:
    from harness.families.registry import registry

    _print_task_dirs()
    print()
    rows = [("task", "family", "dataset (hub / local)", "metrics (main first)")]
    for name, t in sorted(registry().items()):
        ds = " / ".join(x for x in (t.dataset.hub_id, t.dataset.local_dir) if x)
        metrics = [t.main_metric] + [m for m in t.metrics if m != t.main_metric]
        rows.append((name, t.family, ds, ", ".join(metrics)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    if args.verbose:
        print()
        for name, t in sorted(registry().items()):
            print(f"{name}: {t.description}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.config import load_profile
    from harness.families.registry import scan
    from harness.paths import profiles_dir

    _print_task_dirs()
    tasks = scan()
    profiles = sorted(p.stem for p in profiles_dir().glob("*.yaml"))
    for p in profiles:
        load_profile(p)
    from harness.probes.base import all_specs

    probes = all_specs()  # each probe.yaml checked (fields, model kinds, main metric)
    print(
        f"ok: {len(tasks)} task(s) ({', '.join(sorted(tasks))}), {len(profiles)} profile(s) ({', '.join(profiles)}), "
        f"{len(probes)} probe(s) ({', '.join(sorted(probes))})"
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from harness.config import dump_yaml, resolve_run_config
    from harness.families.registry import get_task

    task = get_task(args.task)
    cfg = resolve_run_config(task, args.overrides)
    # settings of other families are left out (they are still validated)
    print(dump_yaml(cfg.resolved(task.family)), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from harness.commands.check import check, print_report
    from harness.config import resolve_run_config
    from harness.families.registry import get_task

    task = get_task(args.task)
    print_report(check(task, resolve_run_config(task, args.overrides)))
    return 0


def _run(task_name: str, overrides: list[str]) -> int:
    from harness.config import resolve_run_config
    from harness.families.registry import get_task

    task = get_task(task_name)
    cfg = resolve_run_config(task, overrides)  # a mistake in the config is told before the heavy imports
    from harness.run import runlock

    # a second identical command stops here, before its start-up (the run's own folder lock comes later)
    held = runlock.hold(runlock.command_folder(cfg, task.name)) if runlock.first_process() else None
    try:
        from harness.run.runner import run

        console = _console()
        result = run(cfg, task, console=console)
        if result.report is not None:  # rank 0 only under DDP
            print_report(console, cfg, task, result)
        return 0
    finally:
        if held is not None:
            os.close(held)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.commands.seeds import split_seeds

    seeds, overrides = split_seeds(args.overrides)
    if seeds is not None:  # seeds=N: the same config with N seeds, nested under one parent run
        from harness.commands.seeds import run_seeds
        from harness.families.registry import get_task

        run_seeds(get_task(args.task), seeds, overrides, console=_console())
        return 0
    return _run(args.task, overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.config import parse_override

    for item in args.overrides:  # what `harness eval` decides itself cannot be overridden the other way
        key, value = parse_override(item)
        if key == "train" and value not in (False, "false"):
            raise ConfigError(
                f"`harness eval` evaluates without training, but override '{item}' asks to train",
                "drop it, or use `harness run <task> model.name=...` to fine-tune and evaluate",
            )
        if key == "model.name":
            raise ConfigError(
                f"`harness eval` takes the model from --model, but override '{item}' names one too",
                "give the model once, with --model",
            )
        if key == "data.test_file" and args.data:
            raise ConfigError(
                f"`harness eval` takes the data file from --data, but override '{item}' names one too",
                "give the data file once, with --data",
            )
    overrides = ["train=false", f"model.name={args.model}"] + list(args.overrides)
    if args.data:
        overrides.append(f"data.test_file={os.path.abspath(args.data)}")
    return _run(args.task, overrides)


def cmd_compress(args: argparse.Namespace) -> int:
    from harness.commands.compress import DistillSpec, compress
    from harness.metrics.paired import p_text

    spec = DistillSpec(args.layers, args.student, args.temperature, args.alpha)
    console = _console()
    console.print(f"compressing the model of run {args.run} with {args.method}", highlight=False)
    done = compress(args.run, args.method, args.overrides, args.sparsity, args.threads, spec, console=console)
    result, measured, run_id = done.result, done.measured, done.result.run_id
    if result.report is None:
        return 0
    print_report(console, done.cfg, done.task, result, what=f"{args.method} variant of run {args.run[:8]}")
    size, p50 = measured.get("size_mb"), measured.get("latency_b1_p50_ms")
    if size is not None and p50 is not None:
        print(
            f"{args.method}: {size:.1f} MB ({measured['size_ratio']:.2f}x smaller), batch-1 p50 {p50:.1f} ms "
            f"({measured['speedup_b1_p50']:.2f}x the source's {measured['source_latency_b1_p50_ms']:.1f} ms), "
            f"batch-32 {measured['throughput_b32']:.1f} ex/s ({measured['speedup_b32']:.2f}x)"
        )
    main = done.task.main_metric
    if f"paired_delta_{main}" in measured:
        print(
            f"vs the source on the same examples: {main} {measured[f'paired_delta_{main}']:+.4f} "
            f"(paired test {p_text(measured[f'paired_p_{main}'])})"
        )
    print(f"every variant of this run: artifact compression/variants.md of run {run_id}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from harness.commands.score import TEXT_METRICS, score, score_texts

    if args.task in TEXT_METRICS:
        if not args.references:
            raise ConfigError(f"`harness score {args.task}` needs --references", "pass the reference file")
        res = score_texts(
            args.task,
            Path(args.predictions),
            Path(args.references),
            field=args.field,
            split=args.split,
            engine=args.engine,
        )
        for w in res.notes:
            print(f"warning: {w}", file=sys.stderr)
        if args.json:
            print(json.dumps({**{k: e.value for k, e in res.estimates.items()}, "signature": res.signature}))
            return 0
        _print_estimates(res)
        return 0
    out = score(
        args.task,
        Path(args.predictions),
        gold=Path(args.gold) if args.gold else None,
        na_probs=Path(args.na_probs) if args.na_probs else None,
        na_prob_thresh=args.na_prob_thresh,
    )
    for w in out.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(out.totals))
        return 0
    console = _console()
    from rich.table import Table

    table = Table(title=f"{args.task} · {out.questions:,} questions · gold {out.gold_source}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI (bootstrap over questions)", justify="right")
    for k, v in out.totals.items():
        ci = out.intervals.get(k)
        value = f"{v}" if isinstance(v, int) else f"{v:.4f}"
        table.add_row(k, value, f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
    console.print(table)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.config import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    _check_compare_args(args)  # argument errors first, before the heavy imports
    from harness.commands import compare as C
    from harness.commands.systems import from_files, from_runs
    from harness.tracking.store import check_store

    if args.predictions:
        systems, metrics, refs = from_files(
            [Path(p) for p in args.predictions],
            references=Path(args.references) if args.references else None,
            gold=Path(args.gold) if args.gold else None,
            names=args.metric,
            field=args.field,
            split=args.split,
            engine=args.engine,
        )
    else:
        check_store(uri)
        systems, metrics, refs = from_runs(args.runs, uri, args.metric)
    C.check_same_examples(systems)
    C.align(systems)
    result = C.compare(systems, metrics, references=refs, resamples=args.resamples, seed=args.seed)
    if args.json:
        print(C.write_json(result))
    else:
        C.print_table(result, print)
    if not args.no_log:
        run_id = _log_comparison(result, uri, args)
        if not args.json:
            print(f"MLflow run {run_id} in experiment 'compare'")
            print(f"open it: {_open_line(uri, run_id)}")
            if args.runs:
                print(f"the runs side by side: {_compare_line(uri, args.runs)}")
    return 0


def _check_compare_args(args: argparse.Namespace) -> None:
    if args.predictions:
        if args.runs:
            raise ConfigError("give runs or --predictions files, not both", "compare either runs or files")
        if len(args.predictions) < 2:
            raise ConfigError(
                "--predictions needs at least two files (the first is the baseline)",
                "e.g. harness compare --predictions a.txt b.txt --references refs.txt",
            )
    elif len(args.runs) < 2:
        raise ConfigError(
            "harness compare needs at least two runs (the first is the baseline)",
            "e.g. harness compare <baseline run id> <run id>",
        )


def _open_line(uri: str, run_id: str) -> str:
    """How to open a run in the MLflow UI's Model training view (harness/tracking/links.py)."""
    from harness.interrupts import tracking_client
    from harness.tracking import links

    exp = tracking_client(uri).get_run(run_id).info.experiment_id
    return links.open_hint(uri) + links.run_url(links.ui_base(uri), exp, run_id)


def _compare_line(uri: str, run_ids: list[str]) -> str:
    from harness.interrupts import tracking_client
    from harness.tracking import links

    client = tracking_client(uri)
    exp = client.get_run(run_ids[0]).info.experiment_id
    return links.compare_url(links.ui_base(uri), exp, [client.get_run(r).info.run_id for r in run_ids])


def _log_comparison(result: Any, uri: str, args: argparse.Namespace) -> str:
    import tempfile
    from pathlib import Path

    from harness.commands.compare import save_outputs
    from harness.tracking.mlflow_run import record_run
    from harness.tracking.store import check_store

    check_store(uri)
    everyone = [result.baseline, *result.systems]
    tags = {
        "mode": "compare",
        **{f"metric.{name}.signature": sig for name, sig in result.signatures.items()},
        "compare.baseline": everyone[0].run_id or everyone[0].name,
        "compare.runs": ",".join(s.run_id or s.name for s in everyone),
    }
    tags.update({f"compare.run.{i}": s.run_id or s.name for i, s in enumerate(everyone)})
    if everyone[0].task:
        tags["task"] = everyone[0].task
    params = {
        "baseline": everyone[0].name,
        "systems": ",".join(s.name for s in result.systems),
        "metrics": ",".join(m.name for m in result.metrics),
        "examples": result.examples,
        "resamples": args.resamples,
        "seed": args.seed,
        "holm": result.holm,
        **(
            {"rouge_split": args.split, "rouge_engine": args.engine}
            if args.predictions and "rouge1" in result.signatures
            else {}
        ),
    }
    metrics = {}
    for i, s in enumerate(result.systems, 1):
        for m in result.metrics:
            r = result.results[s.name][m.name]
            suffix = f"_{i}" if len(result.systems) > 1 else ""
            metrics.update(
                {
                    f"delta_{m.name}{suffix}": r["delta"],
                    f"delta_{m.name}{suffix}_ci_low": r["ci_low"],
                    f"delta_{m.name}{suffix}_ci_high": r["ci_high"],
                    f"p_{m.name}{suffix}": r["p_value"],
                }
            )
    with tempfile.TemporaryDirectory() as tmp:
        save_outputs(result, Path(tmp))
        name = f"compare-{everyone[0].name}-vs-" + "-".join(s.name for s in result.systems)
        return record_run(uri, "compare", name[:200], tags=tags, params=params, metrics=metrics, folder=Path(tmp))


def cmd_suite(args: argparse.Namespace) -> int:
    from harness.commands.suite import run_suite

    run_suite(args.suite, args.model, list(args.overrides), console=_console())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from harness.commands import report as R
    from harness.config import default_tracking_uri
    from harness.tracking.mlflow_run import record_run
    from harness.tracking.store import check_store

    uri = args.tracking_uri or default_tracking_uri()
    check_store(uri)
    built = R.build(R.collect(uri, args.experiment, args.runs), uri, pick=args.pick)
    html_path, md_path = R.write(built, Path(args.out))
    print(R.markdown(built).split("\n## ", 2)[1].split("\n", 1)[1].strip())  # the leaderboard, as Markdown
    print(f"report: {html_path} (and {md_path.name})")
    if not args.no_log:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "report"
            folder.mkdir()
            R.write(built, folder / "report.html")
            run_id = record_run(
                uri,
                "reports",
                "report",
                tags={"mode": "report"},
                params={
                    "pick": args.pick,
                    "tasks": ",".join(built.tasks),
                    "systems": ",".join(built.systems)[:5000],
                    "runs": sum(len(v) for v in built.runs.values()),
                },
                metrics={},
                folder=Path(tmp),
            )
        print(f"MLflow run {run_id} in experiment 'reports' (artifacts report/report.html, report/report.md)")
        print(f"open it: {_open_line(uri, run_id)}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.commands import server

    folder = Path(args.folder)
    if args.action == "start":
        stack = server.start(folder, mlflow_port=args.port, pg_port=args.pg_port, auth=args.auth)
        print(server.describe(stack))
    elif args.action == "stop":
        stopped = server.stop(folder)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.action == "status":
        stack = server.status(folder)
        if stack is not None:
            print(server.describe(stack))
            return 0
        state = server.parts(folder)
        for part, how in state.items():
            print(f"{part}: {how}")
        print(
            f"the stack of {folder.resolve()} is not up: make server starts (or repairs) it, make server-stop stops it"
        )
        return 1
    else:  # url
        stack = server.status(folder)
        if stack is None:
            raise ConfigError(f"no stack is running from {folder.resolve()}", "start it with make server")
        print(stack.tracking_uri if args.what == "mlflow" else stack.database("optuna", "postgresql"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from harness.commands.serve import serve

    serve(args.model, host=args.host, port=args.port)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.config import default_tracking_uri
    from harness.tracking.sync import sync_all

    done = sync_all([Path(f) for f in args.folders], args.tracking_uri or default_tracking_uri())
    for d in done:
        print(f"run {d.run_id}: {d.sent} records sent from {d.folder}")
    if not done:
        print("nothing to send: no run keeps records for later")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.families.registry import get_task
    from harness.tuning import study as tuning

    overrides, retrain_best = [], args.retrain_best
    for item in args.overrides:  # `retrain_best=true` is accepted as a key=value too (make tune ARGS=...)
        if item.split("=", 1)[0] == "retrain_best":
            retrain_best = item.split("=", 1)[1].strip().lower() in ("1", "true", "yes")
        else:
            overrides.append(item)
    study = tuning.make_study(
        get_task(args.task),
        space_path=Path(args.space) if args.space else None,
        study_name=args.study,
        storage_url=args.storage,
        trials=args.trials,
        workers=args.workers if args.worker_index is None and not args.join else 1,
        pruner=args.pruner,
        seed=args.seed,
        overrides=overrides,
    )
    if tuning.is_ddp_follower():  # a DDP rank Lightning started by re-running this command: replay rank 0's trial
        tuning.replay_trial(study)
    elif args.worker_index is not None:  # one of several worker processes of `--workers N`
        tuning.worker_main(study, args.worker_index)
    elif args.join:  # a worker on another host, joining a study that `harness tune` started there
        tuning.join(study)
    else:
        tuning.tune(study, retrain_best=retrain_best)
    return 0


def _print_estimates(res: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{res.name} · signature {res.signature}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI (bootstrap over examples)", justify="right")
    for k, e in res.estimates.items():
        table.add_row(k, f"{e.value:.4f}", f"[{e.low:.4f}, {e.high:.4f}]")
    _console().print(table)


def print_report(console: Any, cfg: Any, task: Any, result: Any, what: str = "") -> None:
    from rich.table import Table

    report = result.report
    minutes, seconds = divmod(int(result.wall_seconds), 60)
    conf = int(round(cfg.eval.confidence * 100))
    from harness.commands.report import comparability_reasons, verdict

    label = result.test_label or report.split
    table = Table(
        title=(f"{what} · " if what else "")
        + f"{task.name} · {label} · {report.n:,} examples · profile {cfg.profile} · {result.device} · "
        f"{minutes}m{seconds:02d}s",
        title_justify="left",
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column(f"{conf}% CI (bootstrap, {cfg.eval.bootstrap_resamples} resamples)", justify="right")
    for name, est in report.estimates.items():
        mark = " (main)" if name == report.main_metric else ""
        table.add_row(name + mark, f"{est.value:.4f}", f"[{est.low:.4f}, {est.high:.4f}]")
    for name, value in report.scalars.items():
        if name != "examples":
            table.add_row(name, _scalar_text(name, value), "")
    console.print(table)
    _print_floors(console, report)
    engine = getattr(cfg.eval, "rouge_engine", "rouge-score")
    facts = {
        "official": result.official,
        "subset": result.subset,
        "test_file": result.test_file,
        "rouge_engines": {engine},
    }
    for ref in task.references:
        reasons = comparability_reasons(ref, task, **facts)
        # each fact once: what the verdict states is not repeated beside the source
        how = "".join(
            f"; {x}"
            for x in (
                ref.implementation and f"computed with {ref.implementation}",
                ref.test_set and f"reported on {ref.test_set}",
            )
            if x and not any(x in r for r in reasons)
        )
        mark = " [green](comparable)[/]" if not reasons else f" [yellow]({verdict(reasons)})[/]"
        console.print(f"  published: {ref.metric} {ref.value} — {ref.model} ({ref.source}{how}){mark}", highlight=False)
    _print_open_it(console, result)


COUNTS = ("empty_", "hit_", "examples", "truncated", "unanswerable")


def _scalar_text(name: str, value: float) -> str:
    """A count as an integer (27, not 27.0000), any other number to four decimals."""
    if name.startswith(COUNTS) and float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4f}"


def _print_floors(console: Any, report: Any) -> None:
    """Each metric's floor (a trivial system on the same examples) and where the result stands against it, one
    line per trivial system."""
    colour = {"below": "red", "at": "yellow", "above": "green"}
    lines: dict[str, list[str]] = {}
    for f in report.floors:
        est = report.estimates.get(f.metric)
        if est is not None:
            level, words = f.verdict(est)
            value = f"{f.value:.4f}" if abs(f.value) < 10 else f"{f.value:.2f}"  # ROUGE and BLEU are x100
            lines.setdefault(f.what, []).append(f"{f.metric} {value}: run [{colour[level]}]{words}[/]")
    for what, parts in lines.items():
        console.print(f"  floor ({what}; a run under it learnt nothing the metric rewards):", highlight=False)
        for part in parts:
            console.print(f"    {part}", highlight=False)


def _print_open_it(console: Any, result: Any) -> None:
    """The run's MLflow coordinates, and the links that open the run (and its logged model) in the UI."""
    from harness.config import redact_uri
    from harness.tracking import links

    uri = result.tracking_uri
    console.print(
        f"MLflow run [bold]{result.run_id}[/] in experiment '{result.experiment}' ({redact_uri(uri)})", highlight=False
    )
    if not result.experiment_id:
        return
    base = links.ui_base(uri)
    console.print(
        f"open it: {links.open_hint(uri)}{links.run_url(base, result.experiment_id, result.run_id)}",
        highlight=False,
        soft_wrap=True,
    )
    if result.model_id:
        console.print(
            f"its model: {links.model_url(base, result.experiment_id, result.model_id)}",
            highlight=False,
            soft_wrap=True,
        )


def cmd_probe(args: argparse.Namespace) -> int:
    from harness.commands.probe import probe
    from harness.probes.base import Settings

    probe(
        args.probe,
        args.model or None,
        args.run or None,
        data_dir=args.data_dir,
        data=args.data,
        tracking_uri=args.tracking_uri,
        settings=Settings(batch_size=args.batch_size, resamples=args.resamples, seed=args.seed, limit=args.limit),
        console=_console(),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness", description="Fine-tune and evaluate transformer models, tracked in MLflow."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for add in (
        _add_run_commands,
        _add_score_command,
        _add_compare_command,
        _add_suite_command,
        _add_report_command,
        _add_server_command,
        _add_serve_command,
        _add_sync_command,
        _add_compress_command,
        _add_tune_command,
        _add_probe_command,
        _add_task_commands,
    ):
        add(sub)
    return p


def _overrides(parser: argparse.ArgumentParser, help: str = "config overrides, e.g. trainer.max_epochs=2") -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)


def _add_run_commands(sub: Any) -> None:
    r = sub.add_parser("run", help="fine-tune and evaluate a task (one MLflow run)")
    r.add_argument("task")
    _overrides(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="evaluate a trained model without training (its own MLflow run)")
    e.add_argument("task")
    e.add_argument("--model", required=True, help="runs:/<run_id>, a model folder, or a .ckpt file")
    e.add_argument("--data", help="a data file with the task's columns (default: the task's test split)")
    _overrides(e)
    e.set_defaults(func=cmd_eval)


def _add_score_command(sub: Any) -> None:
    s = sub.add_parser("score", help="score a predictions file against a task's gold data (official metrics)")
    s.add_argument("task", help="a QA task (squad, squad_v2), or a text metric: rouge, bleu, chrf")
    s.add_argument(
        "--predictions",
        required=True,
        help="QA: JSON object question id -> answer; rouge/bleu/chrf: .txt (one per line) or .jsonl",
    )
    s.add_argument("--gold", help="QA gold data file (default: the task's official evaluation file)")
    s.add_argument("--references", help="rouge/bleu/chrf: reference file, same format and order as --predictions")
    s.add_argument("--field", default="text", help="rouge/bleu/chrf .jsonl: the field holding the text")
    _rouge_options(s)
    s.add_argument("--na-probs", help="SQuAD 2.0: JSON object question id -> no-answer probability")
    s.add_argument(
        "--na-prob-thresh",
        type=float,
        default=1.0,
        help="SQuAD 2.0: predict no answer above this no-answer probability (default 1.0, as official)",
    )
    s.add_argument("--json", action="store_true", help="print only one JSON object with the official keys")
    s.set_defaults(func=cmd_score)


def _rouge_options(p: Any) -> None:
    """ROUGE's split and engine, with the vocabulary runs use (eval.rouge_split, eval.rouge_engine)."""
    from harness.config import ROUGE_ENGINES, ROUGE_SPLITS

    p.add_argument(
        "--split",
        default="auto",
        choices=ROUGE_SPLITS,
        help="rouge: ROUGE-Lsum's sentences: auto splits a text without line breaks (default); newline (or none) "
        "takes each text's lines as they are, exactly as rouge-score does",
    )
    p.add_argument(
        "--engine",
        default="rouge-score",
        choices=ROUGE_ENGINES,
        help="rouge: rouge-score (default), pyrouge (the numbers papers report: ROUGE-1.5.5's processing, seconds) "
        "or pyrouge-perl (Perl ROUGE-1.5.5 itself, minutes)",
    )


def _add_compare_command(sub: Any) -> None:
    from harness.config import DEFAULT_TRACKING_URI
    from harness.metrics import PAIRED_RESAMPLES as BOOTSTRAP_RESAMPLES
    from harness.metrics import PAIRED_SEED as SEED

    c = sub.add_parser("compare", help="paired significance: is B better than A on the same examples (runs or files)")
    c.add_argument("runs", nargs="*", metavar="RUN", help="MLflow run ids; the first is the baseline")
    c.add_argument("--predictions", nargs="+", metavar="FILE", help="output files instead of runs (first: baseline)")
    c.add_argument("--references", help="with --predictions: the reference file (generation metrics)")
    c.add_argument("--gold", help="with --predictions: SQuAD gold data (the files map question id -> answer)")
    c.add_argument("--metric", nargs="+", help="metrics to compare (default: the task's; files: bleu chrf)")
    c.add_argument("--field", default="text", help="files in .jsonl: the field holding the text")
    _rouge_options(c)
    c.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="paired-bootstrap resamples")
    c.add_argument("--seed", type=int, default=SEED, help="resampling seed (sacreBLEU's default: 12345)")
    c.add_argument("--json", action="store_true", help="print one JSON object (scripts and CI can gate on it)")
    c.add_argument("--no-log", action="store_true", help="do not record the comparison as an MLflow run")
    c.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})"
    )
    c.set_defaults(func=cmd_compare)


def _add_suite_command(sub: Any) -> None:
    su = sub.add_parser("suite", help="a set of tasks and probes (suites/<name>.yaml) as one parent MLflow run")
    su.add_argument("suite", help="a suite name (suites/<name>.yaml)")
    su.add_argument("--model", help="the model of every entry that names none (default: the suite's, else each task's)")
    _overrides(su, help="config overrides for every task entry")
    su.set_defaults(func=cmd_suite)


def _add_report_command(sub: Any) -> None:
    from harness.config import DEFAULT_TRACKING_URI

    r = sub.add_parser("report", help="a static HTML leaderboard of the runs in MLflow, with published references")
    r.add_argument("--experiment", nargs="+", help="experiments to report (default: every task's experiment)")
    r.add_argument("--runs", nargs="+", help="run ids to report instead of experiments")
    r.add_argument("--out", default="report.html", help="the HTML file to write (a .md beside it)")
    r.add_argument("--no-log", action="store_true", help="do not record the report as an MLflow run")
    r.add_argument(
        "--pick",
        choices=["latest", "best"],
        default="latest",
        help="which of a system's runs on the row's test examples a cell shows: the latest (default) or the best on "
        "the validation metric (never the test metric)",
    )
    r.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})"
    )
    r.set_defaults(func=cmd_report)


def _add_server_command(sub: Any) -> None:
    sv = sub.add_parser("server", help="a team stack here: PostgreSQL + an MLflow server on 127.0.0.1 (make server)")
    sv.add_argument("action", choices=["start", "stop", "status", "url"])
    sv.add_argument(
        "what",
        nargs="?",
        default="mlflow",
        choices=["mlflow", "optuna"],
        help="url: which URL to print (for export MLFLOW_TRACKING_URI=... / OPTUNA_STORAGE=...)",
    )
    sv.add_argument("--folder", default=".server", help="where the cluster, secrets, logs and artifacts live")
    sv.add_argument("--port", type=int, default=5000, help="the MLflow server's port (another if taken)")
    sv.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port (another if taken)")
    sv.add_argument("--auth", action="store_true", help="MLflow's basic-auth app with a generated admin password")
    sv.set_defaults(func=cmd_server)


def _add_serve_command(sub: Any) -> None:
    sv = sub.add_parser("serve", help="a logged model over REST (MLflow's scoring protocol) on 127.0.0.1")
    sv.add_argument("model", help="runs:/<run id>/model or models:/<name>/<version>")
    sv.add_argument("--port", type=int, default=5001)
    sv.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    sv.set_defaults(func=cmd_serve)


def _add_sync_command(sub: Any) -> None:
    from harness.config import DEFAULT_TRACKING_URI

    sy = sub.add_parser("sync", help="send what runs kept while their tracking server was away (their journals)")
    sy.add_argument("folders", nargs="*", help="run or journal folders (default: every journal under .harness)")
    sy.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})"
    )
    sy.set_defaults(func=cmd_sync)


def _add_compress_command(sub: Any) -> None:
    from harness.compress import METHODS

    c = sub.add_parser("compress", help="a compressed variant of a run's model: accuracy, size and latency")
    c.add_argument("run", help="the MLflow run whose logged model is compressed (trained with log_model=true)")
    c.add_argument("--method", required=True, choices=METHODS)
    c.add_argument(
        "--sparsity",
        type=float,
        default=0.5,
        help="prune: the share of backbone weights set to 0; prune-structured: of feed-forward neurons removed",
    )
    c.add_argument("--threads", type=int, help="CPU threads for inference and timing (default: the source run's)")
    c.add_argument(
        "--layers",
        type=int,
        help="distill: the student's layers, taken from the teacher (default: half); prune-structured: keep only N",
    )
    c.add_argument("--student", help="distill: a student model sharing the teacher's tokenizer (instead of --layers)")
    c.add_argument("--temperature", type=float, default=2.0, help="distill: softmax temperature T (default 2)")
    c.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the teacher's soft targets (0.5)")
    _overrides(c, help="config overrides for the evaluation, e.g. data.test_size=500")
    c.set_defaults(func=cmd_compress)


def _add_tune_command(sub: Any) -> None:
    t = sub.add_parser("tune", help="hyperparameter search with Optuna (trials as nested MLflow runs)")
    t.add_argument("task")
    t.add_argument("--trials", type=int, default=20, help="trials to finish (complete or pruned) in the study")
    t.add_argument("--workers", type=int, default=1, help="worker processes sharing the study")
    t.add_argument("--space", help="search space YAML (default: configs/hpo/<family>.yaml)")
    t.add_argument("--study", help="study name (default: <task>-<space file name>); the same name resumes it")
    t.add_argument("--storage", help="Optuna storage URL (default: $OPTUNA_STORAGE or sqlite:///optuna.db)")
    t.add_argument(
        "--pruner",
        default="sha",
        choices=["sha", "median", "hyperband", "none"],
        help="stop unpromising trials early: sha (successive halving, rungs tuned to the validations per trial; "
        "the default), median, hyperband, none",
    )
    t.add_argument("--seed", type=int, help="sampler seed (default: the run config's seed)")
    t.add_argument(
        "--retrain-best",
        action="store_true",
        help="then train the best parameters on train+validation, test once, register <task>-best",
    )
    t.add_argument(
        "--join",
        action="store_true",
        help="run trials of a study another `harness tune` started (e.g. on another host), no summary",
    )
    t.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    _overrides(t, help="config overrides for every trial")
    t.set_defaults(func=cmd_tune)


def _add_probe_command(sub: Any) -> None:
    from harness.config import DEFAULT_TRACKING_URI

    pr = sub.add_parser("probe", help="bias probes (CrowS-Pairs, WinoBias, BBQ, ...) as MLflow runs")
    pr.add_argument("probe", help="a probe name (tasks/<name>/probe.yaml) or all (every probe that fits the model)")
    pr.add_argument("--model", help="hub id, model folder or runs:/<run id>")
    pr.add_argument("--run", help="MLflow run id of a trained model: probe it and nest the probe runs under it")
    pr.add_argument("--data", help="the probe's data file or folder (default: under HARNESS_DATA_DIR)")
    pr.add_argument("--data-dir", help="the data directory (default: $HARNESS_DATA_DIR)")
    pr.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})"
    )
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--limit", type=int, help="score a subset: the first N examples (BBQ: N per category, random)")
    pr.set_defaults(func=cmd_probe)


def _add_task_commands(sub: Any) -> None:
    ls = sub.add_parser("ls", help="list tasks")
    ls.add_argument("-v", "--verbose", action="store_true", help="also print each task's description")
    ls.set_defaults(func=cmd_ls)
    v = sub.add_parser("validate", help="check every task file and profile")
    v.set_defaults(func=cmd_validate)
    ch = sub.add_parser("check", help="load a task's data as a run would, and report it (no training, no MLflow)")
    ch.add_argument("task")
    _overrides(ch, help="config overrides, e.g. profile=full")
    ch.set_defaults(func=cmd_check)
    c = sub.add_parser("config", help="print the resolved config of a task")
    c.add_argument("task")
    _overrides(c)
    c.set_defaults(func=cmd_config)


def main(argv: Optional[list[str]] = None) -> int:
    if os.environ.get("CI") and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (harness eval imdb --model X trainer.max_epochs=2)
    stray = [x for x in extra if "=" not in x or x.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from harness import interrupts

    with interrupts.interrupts_between_writes():
        try:
            return args.func(args)
        except KeyboardInterrupt:
            how = "terminated (SIGTERM)" if interrupts.terminated else "interrupted"
            if not os.environ.get("HARNESS_TUNE_WORKER"):  # a study's worker: its coordinator says it, once
                print(
                    f"{how}: every run this command started is closed as KILLED; run the same command again to resume",
                    file=sys.stderr,
                )
            return 143 if interrupts.terminated else 130
        except Exception as e:
            err = user_error(e)
            if err is None:
                raise  # a bug: keep the traceback
            print(f"error: {err.message}", file=sys.stderr)
            return err.exit_code


def entry() -> None:
    """The `harness` command: `main`, then, after a user's mistake (its one line printed, its run marked FAILED),
    exit at once: tearing down torch, Lightning and MLflow took seconds (minutes on a loaded machine), and a thread a
    library left running would hold the exit longer still."""
    rc = main()
    if rc not in (0, None):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
