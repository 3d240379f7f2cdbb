"""`harness report [--experiment E ...] [--runs ID ...] [--out report.html]`: a leaderboard of what MLflow holds.

One static, self-contained HTML page (and the same tables as Markdown beside it):

- the leaderboard: tasks × systems (a system is the model a run evaluated: a hub id, a folder, a baseline, the model
  of an earlier run), each cell the task's main metric with its 95% interval from one finished run, named in the
  cell with how many runs the system has. The row's test set is the one most of its systems were scored on; a
  system's cell is its run on that set when it has one, chosen by `--pick`: `latest` (the default), or `best` on
  the validation metric (never on the test metric). The row's best is in bold, a cell marked ▼ is worse than the
  best by a paired test on the same test examples (harness compare's tests, Holm-adjusted across the row), and a
  cell on other test examples is never shown unmarked (≠ other test examples: not tested, not ranked);
- per task, its published reference numbers with their sources, and for each whether it is comparable with these
  runs — same official split, same metric implementation, same test set — or why not;
- per task, every run shown with its settings that matter.

It is logged as the artifacts of a run in the experiment `reports`, and written to `--out`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.config import redact_uri
from harness.errors import DataError
from harness.metrics.paired import p_text

RUN_MODES = ("train+eval", "eval", "baseline", "seeds")
IMPLEMENTATION = {
    "rouge1": "rouge-score",
    "rouge2": "rouge-score",
    "rougeL": "rouge-score",
    "rougeLsum": "rouge-score",
    "bleu": "sacreBLEU",
    "chrf": "sacreBLEU",
}
ROUGE_NOTE = (
    "on See et al.'s CNN/DailyMail outputs rouge-score gives 39.26 R-1 where ROUGE-1.5.5 through pyrouge gives the "
    "paper's 39.53 (Perl's stemmer maps WordNet's irregular forms); run with eval.rouge_engine=pyrouge to compare"
)
PICKS = ("latest", "best")


@dataclass
class RunRow:
    run_id: str
    task: str
    name: str
    system: str
    mode: str
    profile: str
    metrics: dict[str, float]
    official: bool
    subset: bool
    digest: Optional[str]
    test_rows: Optional[str]
    start: int
    signatures: dict[str, str] = field(default_factory=dict)  # metric -> how it was computed (metric.*.signature)
    test_file: Optional[str] = None  # a user's file scored in place of the test split (tag data.test_file)
    experiment_id: str = ""
    train_rows: Optional[str] = None  # rows the model was trained on in this run (None: no training)
    train_digest: Optional[str] = None  # which rows (params split.train.digest)

    @property
    def short(self) -> str:
        """The run, named unambiguously: its name and the start of its id."""
        return f"{self.name} ({self.run_id[:8]})"

    def main(self, metric: str) -> tuple[Optional[float], Optional[float], Optional[float]]:
        m = self.metrics
        if self.mode == "seeds":
            return m.get(f"test_{metric}_mean"), m.get(f"test_{metric}_ci_low"), m.get(f"test_{metric}_ci_high")
        return m.get(f"test_{metric}"), m.get(f"test_{metric}_ci_low"), m.get(f"test_{metric}_ci_high")


@dataclass
class Cell:
    run: RunRow
    value: Optional[float]
    low: Optional[float]
    high: Optional[float]
    best: bool = False
    worse: Optional[float] = None  # Holm-adjusted p-value when worse than the best by a paired test
    not_tested: Optional[str] = None  # why it was not tested against the best
    runs: int = 1  # finished runs of this system on this task
    index: int = 1  # which of them (by start time) the cell shows
    on_row_set: bool = True  # scored on the row's test examples


@dataclass
class Report:
    tasks: dict[str, Any]  # name -> TaskSpec
    systems: list[str]
    cells: dict[tuple[str, str], Cell]
    runs: dict[str, list[RunRow]]
    references: dict[str, list[tuple[Any, str]]]  # task -> [(Reference, comparability)]
    store: str
    notes: list[str] = field(default_factory=list)
    pick: str = "latest"
    ui: str = ""  # the MLflow UI whose run pages the cells link to (harness/tracking/links.py)

    def link(self, run: RunRow) -> str:
        """The run's page in the MLflow UI's Model training view ("" when the report has no UI to point at)."""
        from harness.tracking import links

        return links.run_url(self.ui, run.experiment_id, run.run_id) if self.ui and run.experiment_id else ""


def system_name(tags: dict[str, str]) -> str:
    model = tags.get("model", "?")
    if model.startswith("runs:/"):
        return f"model of run {model[6:].strip('/')[:8]}"
    return model.rstrip("/").split("/")[-1] if model.startswith(("/", ".", "~")) else model


def system_label(tags: dict[str, str], params: dict[str, str]) -> str:
    """What was trained, in words: a system is the model, the rows it was trained on (how many; the exact rows tell
    systems of one label apart), its transfer mode and profile; a compressed variant and a search's retrain are
    systems of their own, labelled as such.

    >>> system_label({"model": "m", "mode": "train+eval", "profile": "quick"}, {"split.train.rows": "20000"})
    'm · fine-tuned on 20,000 · quick'
    >>> system_label({"model": "runs:/abcdef123/", "mode": "eval", "harness.compress.method": "onnx-int8"}, {})
    'model of run abcdef12 · onnx-int8 variant'
    """
    parts = [system_name(tags)]
    mode = tags.get("mode", "")
    if mode in ("train+eval", "seeds") and params.get("split.train.rows", "").isdigit():
        parts.append(f"fine-tuned on {int(params['split.train.rows']):,}")
        if params.get("data.train_on_validation") == "true":
            parts[-1] += " (validation folded in)"
        if params.get("model.mode", "full") not in ("full", ""):
            parts.append(params["model.mode"])
        if tags.get("profile"):
            parts.append(tags["profile"])
    method = tags.get("harness.compress.method")
    if method:
        spec = tags.get("harness.compress.student_spec") or tags.get("harness.compress.sparsity")
        parts.append(f"{method} variant" + (f" {spec}" if spec else ""))
    if tags.get("optuna.retrain_of_trial"):
        parts.append(f"tune retrain (study {tags.get('optuna.study', '?')}, trial {tags['optuna.retrain_of_trial']})")
    return " · ".join(parts)


def collect(uri: str, experiments: Optional[list[str]], run_ids: Optional[list[str]]) -> list[RunRow]:
    from mlflow.tracking import MlflowClient

    from harness.commands.systems import get_run
    from harness.families.registry import registry

    client = MlflowClient(uri)
    if run_ids:
        runs = [get_run(client, r, uri) for r in run_ids]
    else:
        names = experiments or sorted(registry())
        exps = [e for e in (client.get_experiment_by_name(n) for n in names) if e is not None]
        if experiments and len(exps) < len(experiments):
            missing = sorted(set(experiments) - {e.name for e in exps})
            raise DataError(
                f"no experiment named {', '.join(missing)} in {redact_uri(uri)}",
                "name experiments that hold runs (each task's runs are in the experiment of its name)",
            )
        runs = (
            client.search_runs(
                [e.experiment_id for e in exps], filter_string="attributes.status = 'FINISHED'", max_results=5000
            )
            if exps
            else []
        )
    seeds_parents = {r.info.run_id for r in runs if r.data.tags.get("mode") == "seeds"}
    rows = []
    for r in runs:
        t = r.data.tags
        if (
            t.get("mode") not in RUN_MODES
            or "optuna.trial" in t
            or "task" not in t
            or t.get("mlflow.parentRunId") in seeds_parents
            or r.info.status != "FINISHED"
        ):
            continue
        rows.append(
            RunRow(
                r.info.run_id,
                t["task"],
                r.info.run_name or r.info.run_id[:8],
                system_label(t, r.data.params),
                t["mode"],
                t.get("profile", ""),
                dict(r.data.metrics),
                t.get("data.official_split", "true") == "true",
                t.get("data.subset", "false") == "true",
                r.data.params.get("split.test.digest"),
                r.data.params.get("split.test.rows"),
                r.info.start_time,
                {k.split(".")[1]: v for k, v in t.items() if k.startswith("metric.") and k.endswith(".signature")},
                t.get("data.test_file"),
                r.info.experiment_id,
                r.data.params.get("split.train.rows") if t["mode"] in ("train+eval", "seeds") else None,
                r.data.params.get("split.train.digest") if t["mode"] in ("train+eval", "seeds") else None,
            )
        )
    _tell_apart(rows)
    if not rows:
        where = ", ".join(experiments) if experiments else "the task experiments"
        raise DataError(
            f"no finished task runs to report in {where} ({redact_uri(uri)})",
            "run some first (make eval TASK=imdb), or name the experiments or runs to report",
        )
    return rows


def _tell_apart(rows: list[RunRow]) -> None:
    """Two systems with one label (the same model and training size, but other training rows): each label gets the
    start of its training rows' digest."""
    digests: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        digests.setdefault((r.task, r.system), set()).add(r.train_digest or "")
    for r in rows:
        if len(digests[(r.task, r.system)]) > 1:
            r.system += f" · train rows {(r.train_digest or 'none')[:6]}"


def build(rows: list[RunRow], uri: str, resamples: int = 1000, pick: str = "latest") -> Report:
    from harness.families.registry import registry

    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}")
    tasks = {n: t for n, t in registry().items() if any(r.task == n for r in rows)}
    systems = sorted({r.system for r in rows if r.task in tasks})
    cells: dict[tuple[str, str], Cell] = {}
    runs: dict[str, list[RunRow]] = {}
    for r in sorted(rows, key=lambda r: r.start):
        if r.task in tasks:
            runs.setdefault(r.task, []).append(r)
    for name, task_runs in runs.items():
        row_set = row_test_set(task_runs)
        for system in sorted({r.system for r in task_runs}):
            mine = [r for r in task_runs if r.system == system]  # by start time
            chosen = choose(mine, row_set, pick, tasks[name])
            cell = Cell(chosen, *chosen.main(tasks[name].main_metric), runs=len(mine), index=mine.index(chosen) + 1)
            cell.on_row_set = chosen.digest == row_set
            cells[(name, system)] = cell
    from harness.tracking import links

    report = Report(tasks, systems, cells, runs, {}, redact_uri(uri), pick=pick, ui=links.ui_base(uri))
    for name, task in tasks.items():
        _mark_row(report, name, task, uri, resamples)
        best = [c.run for (t, _), c in cells.items() if t == name and c.best]
        report.references[name] = [(ref, comparability(ref, task, best or runs[name])) for ref in task.references]
    return report


def row_test_set(task_runs: list[RunRow]) -> Optional[str]:
    """The test set a row is about: the split digest the most systems have a run on (ties: the more test rows, then
    the most recent). A user's file is never a task row's test set while any run scored the task's own split."""
    own = [r for r in task_runs if not r.test_file] or task_runs
    score: dict[Optional[str], tuple[int, int, int]] = {}
    for d in {r.digest for r in own}:
        on = [r for r in own if r.digest == d]
        rows = max(int(r.test_rows) if (r.test_rows or "").isdigit() else 0 for r in on)
        score[d] = (len({r.system for r in on}), rows, max(r.start for r in on))
    return max(score, key=lambda d: score[d])


def choose(mine: list[RunRow], row_set: Optional[str], pick: str, task: Any) -> RunRow:
    """A system's run for its cell: among its runs on the row's test set (all of its runs when it has none there),
    the latest, or with `best` the best on the validation metric (never the test metric; runs without a validation
    score, e.g. evaluations of a logged model, come after those with one, latest first)."""
    pool = [r for r in mine if r.digest == row_set] or mine
    if pick == "latest":
        return pool[-1]
    sign = -1 if task.direction == "minimize" else 1
    key = f"val_{task.main_metric}"

    def rank(r: RunRow) -> tuple[int, float, int]:
        v = r.metrics.get(key)
        return (1, sign * v, r.start) if v is not None and math.isfinite(v) else (0, 0.0, r.start)

    return max(pool, key=rank)


def _mark_row(report: Report, name: str, task: Any, uri: str, resamples: int) -> None:
    from harness.commands import compare as C
    from harness.commands.systems import from_runs
    from harness.metrics.paired import holm

    every = [c for (t, _), c in report.cells.items() if t == name and c.value is not None]
    for c in every:
        if not c.on_row_set:
            c.not_tested = f"other test examples than the row's ({c.run.test_rows or '?'} rows): not tested, not ranked"
    row = [c for c in every if c.on_row_set]
    if not row:
        return
    sign = -1 if task.direction == "minimize" else 1
    best = max(row, key=lambda c: sign * c.value)
    best.best = True
    tested, pvalues = [], []
    for c in row:
        if c is best:
            continue
        try:
            systems, metrics, refs = from_runs([best.run.run_id, c.run.run_id], uri, [task.main_metric])
            C.check_same_examples(systems)
            C.align(systems)
            result = C.compare(
                systems, [m for m in metrics if m.name == task.main_metric], references=refs, resamples=resamples
            )
        except DataError as e:
            c.not_tested = e.problem
            continue
        tested.append(c)
        pvalues.append(result.results[systems[1].name][task.main_metric]["p_value"])
    for c, p in zip(tested, holm(pvalues) if pvalues else []):
        if p < C.ALPHA:
            c.worse = p


def comparability(ref: Any, task: Any, runs: list[RunRow]) -> str:
    """Whether a published number can be put beside these runs (the row's best), or why not."""
    engines = {"pyrouge" if "engine:ROUGE-1.5.5" in r.signatures.get("rouge", "") else "rouge-score" for r in runs}
    return verdict(
        comparability_reasons(
            ref,
            task,
            official=all(r.official for r in runs),
            subset=any(r.subset for r in runs),
            test_file=next((r.test_file for r in runs if r.test_file), None),
            rouge_engines=engines,
        )
    )


def comparability_reasons(
    ref: Any, task: Any, *, official: bool, subset: bool, test_file: Optional[str], rouge_engines: set[str]
) -> list[str]:
    """Why a published reference cannot stand beside a run's numbers (empty: it can). The one rule, used by the
    report and by a run's own console summary."""
    reasons = []
    if test_file:
        reasons.append(
            f"another test set (the run scored your file {Path(test_file).name}, not {task.name}'s test split)"
        )
    ours = IMPLEMENTATION.get(ref.metric)
    if ref.metric.startswith("rouge") and rouge_engines and rouge_engines <= {"pyrouge", "pyrouge-perl"}:
        ours = "ROUGE-1.5.5"  # eval.rouge_engine=pyrouge (or pyrouge-perl)
    if ref.implementation and (ours is None or ours.lower() not in ref.implementation.lower()):
        why = f"computed with {ref.implementation}" + (f", harness uses {ours}" if ours else "")
        if ref.metric.startswith("rouge") and "1.5.5" in ref.implementation:
            why += f" ({ROUGE_NOTE})"
        reasons.append(why)
    if ref.test_set:
        reasons.append(f"reported on {ref.test_set}")
    if ref.metric not in (task.metrics or []):
        reasons.append(f"the task does not report {ref.metric}")
    if not official and not test_file:
        reasons.append("the run used a fallback split, not the official one")
    if subset:
        reasons.append("the run scored a subset of the test split")
    return reasons


def verdict(reasons: list[str]) -> str:
    return "comparable" if not reasons else "not comparable: " + "; ".join(reasons)


# ---- rendering -------------------------------------------------------------------------------------------------------


def _official(run: RunRow) -> str:
    if run.test_file:
        return f"no: your file {Path(run.test_file).name}"
    return "yes" if run.official else "no"


def _num(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def _cell_text(c: Optional[Cell]) -> tuple[str, str]:
    """(text, mark) for a leaderboard cell."""
    if c is None:
        return "", ""
    text = _num(c.value) + (f" [{_num(c.low)}, {_num(c.high)}]" if c.low is not None else "")
    if not c.on_row_set:
        return text, "≠ other test examples"
    mark = "best" if c.best else (f"▼ {p_text(c.worse)}" if c.worse is not None else ("≠" if c.not_tested else ""))
    return text, mark


def _which(c: Cell) -> str:
    """Which run a cell shows (its name and the start of its id: names repeat), and how many the system has."""
    return f"run {c.run.short} · {c.index} of {c.runs} run{'s' if c.runs > 1 else ''}"


def _trained(run: RunRow) -> str:
    return f"{int(run.train_rows):,}" if (run.train_rows or "").isdigit() else "–"


def _rule(r: Report) -> str:
    how = "the latest" if r.pick == "latest" else "the best on the validation metric (never the test metric)"
    return (
        f"Each cell is {how} of the system's finished runs on the row's test examples (the set most systems were "
        "scored on; --pick latest|best)"
    )


def markdown(r: Report) -> str:
    lines = [
        "# harness report",
        "",
        f"Store: {r.store}",
        "",
        "## Leaderboard (main metric, 95% interval)",
        "",
        "| task | metric | " + " | ".join(r.systems) + " |",
        "|---|---|" + "---|" * len(r.systems),
    ]
    for name, task in r.tasks.items():
        cells = []
        for s in r.systems:
            c = r.cells.get((name, s))
            text, mark = _cell_text(c)
            which = ""
            if c is not None:
                which = f" <sub>[{_which(c)}]({r.link(c.run)})</sub>" if r.link(c.run) else f" <sub>{_which(c)}</sub>"
            cells.append((f"**{text}**" if mark == "best" else f"{text} {mark}".strip()) + which)
        lines.append(f"| {name} | {task.main_metric} ({task.direction[:3]}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{_rule(r)}. **bold**: the row's best; ▼: worse than the best by a paired test on the same examples "
        "(Holm-adjusted p); ≠ other test examples: scored on other examples than the row's, not tested or ranked.",
        "",
    ]
    for name, task in r.tasks.items():
        lines += [f"## {name}", "", task.description, ""]
        if r.references.get(name):
            lines += ["| published | value | model | source | comparable? |", "|---|---|---|---|---|"]
            for ref, verdict in r.references[name]:
                lines.append(f"| {ref.metric} | {ref.value} | {ref.model} | {ref.source} | {verdict} |")
            lines.append("")
        lines += [
            "| run | system | mode | profile | trained on | "
            + task.main_metric
            + " [95% CI] | test rows | official | id |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in r.runs[name]:
            v, lo, hi = run.main(task.main_metric)
            named = f"[{run.name}]({r.link(run)})" if r.link(run) else run.name
            lines.append(
                f"| {named} | {run.system} | {run.mode} | {run.profile} | {_trained(run)} | {_num(v)} [{_num(lo)}, "
                f"{_num(hi)}] | {run.test_rows or '?'} | {_official(run)} | {run.run_id} |"
            )
        lines.append("")
    return "\n".join(lines)


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.6em 0 1.4em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}.best{font-weight:700;
background:#eaf5ea}.worse{color:#a33}.untested{color:#888}.no{color:#a33}.yes{color:#282}small{color:#666}"""


def html_page(r: Report) -> str:
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>harness report</title>",
        f"<style>{CSS}</style></head><body><h1>harness report</h1><p><small>store {e(r.store)}</small></p>",
        "<h2>Leaderboard</h2><table id='leaderboard'><tr><th>task</th><th>metric</th>"
        + "".join(f"<th>{e(s)}</th>" for s in r.systems)
        + "</tr>",
    ]
    for name, task in r.tasks.items():
        out.append(f"<tr><td>{e(name)}</td><td>{e(task.main_metric)} <small>({e(task.direction)})</small></td>")
        for s in r.systems:
            c = r.cells.get((name, s))
            text, mark = _cell_text(c)
            cls = "best" if mark == "best" else ("worse" if mark.startswith("▼") else ("untested" if mark else ""))
            title = f" title='{e(c.not_tested)}'" if c is not None and c.not_tested else ""
            extra = f" <small>{e(mark)}</small>" if mark and mark != "best" else ""
            which = ""
            if c is not None:
                shown = f"<a href='{e(r.link(c.run))}'>{e(_which(c))}</a>" if r.link(c.run) else e(_which(c))
                which = f"<br><small class='which' title='{e(c.run.run_id)}'>{shown}</small>"
            out.append(f"<td class='num {cls}'{title}>{e(text)}{extra}{which}</td>")
        out.append("</tr>")
    out.append(
        f"</table><p><small>{e(_rule(r))}. <b>bold</b>: the row's best · ▼: worse than the best by a paired test "
        "on the same examples (Holm-adjusted p) · ≠ other test examples: scored on other examples than the row's, "
        "not tested or ranked</small></p>"
    )
    for name, task in r.tasks.items():
        out.append(f"<h2 id='{e(name)}'>{e(name)}</h2><p>{e(task.description)}</p>")
        if r.references.get(name):
            out.append(
                "<table class='references'><tr><th>published</th><th>value</th><th>model</th><th>source</th>"
                "<th>comparable?</th></tr>"
            )
            for ref, verdict in r.references[name]:
                ok = "yes" if verdict == "comparable" else "no"
                out.append(
                    f"<tr><td>{e(ref.metric)}</td><td class='num'>{ref.value}</td><td>{e(ref.model)}</td>"
                    f"<td>{e(ref.source)}</td><td class='{ok}'>{e(verdict)}</td></tr>"
                )
            out.append("</table>")
        out.append(
            f"<table class='runs'><tr><th>run</th><th>system</th><th>mode</th><th>profile</th><th>trained on</th>"
            f"<th>{e(task.main_metric)} [95% CI]</th><th>test rows</th><th>official test split</th><th>run id</th>"
            "</tr>"
        )
        for run in r.runs[name]:
            v, lo, hi = run.main(task.main_metric)
            named = f"<a href='{e(r.link(run))}'>{e(run.name)}</a>" if r.link(run) else e(run.name)
            out.append(
                f"<tr><td>{named}</td><td>{e(run.system)}</td><td>{e(run.mode)}</td>"
                f"<td>{e(run.profile)}</td><td class='num'>{_trained(run)}</td>"
                f"<td class='num'>{_num(v)} [{_num(lo)}, {_num(hi)}]</td>"
                f"<td class='num'>{e(run.test_rows or '?')}</td><td>{_official(run)}</td>"
                f"<td><small>{e(run.run_id)}</small></td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write(report: Report, out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    md = out.with_suffix(".md")
    out.write_text(html_page(report), encoding="utf-8")
    md.write_text(markdown(report), encoding="utf-8")
    return out, md
