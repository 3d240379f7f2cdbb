"""The leaderboard never hides a run: which run a cell shows (`--pick latest|best`, on the row's test examples), how
many the system has, cells on other test examples always marked, and p-values never printed as zero; the pages are
read back in headless Chromium."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from conftest import build_tiny, in_dir, run_cli, tiny_args
from test_suite_report import _browser

from harness.commands import report as R


def _page_text(path: Path, tmp: Path) -> str:
    dom = _browser(["--dump-dom", path.as_uri()], tmp).stdout
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", dom).split()))


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_dir, tiny_model):
    """imdb runs of three systems: A on the 200-row test subset, then a newer A run on 100 rows; B on 200; C only on
    100 rows. The row's test set is the 200-row one (two systems were scored on it)."""
    work = tmp_path_factory.mktemp("report-rules")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    other = build_tiny(work / "model-b", "encoder")
    third = build_tiny(work / "model-c", "encoder")
    runs = [
        ("a-200", tiny_model, "200"),
        ("a-100", tiny_model, "100"),
        ("b-200", other, "200"),
        ("c-100", third, "100"),
    ]
    with in_dir(work):
        for name, model, rows in runs:
            extra = {"data.test_size": rows, "data.train_size": "64", "tracking.run_name": name}
            assert run_cli(["run", "imdb", *tiny_args(data_dir, model, uri, **extra)]) == 0
    systems = {
        k: f"{name} · fine-tuned on 64 · quick" for k, name in zip("abc", (tiny_model.name, "model-b", "model-c"))
    }
    return {"uri": uri, "work": work, "systems": systems}


def test_a_newer_run_on_fewer_examples_does_not_displace_the_rows_run(store, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert (
        run_cli(["report", "--tracking-uri", store["uri"], "--out", str(out), "--experiment", "imdb", "--no-log"]) == 0
    )
    built = R.build(R.collect(store["uri"], ["imdb"], None), store["uri"])
    a, b, c = (built.cells[("imdb", store["systems"][k])] for k in "abc")
    assert a.run.name == "a-200" and (a.index, a.runs) == (1, 2) and a.on_row_set  # not the newer 100-row run
    assert b.on_row_set and not c.on_row_set and c.not_tested.startswith("other test examples than the row's")
    assert not c.best  # a cell on other examples is never ranked
    text = _page_text(out, tmp_path)
    ids = {k: built.cells[("imdb", store["systems"][k])].run.run_id[:8] for k in "abc"}
    assert f"run a-200 ({ids['a']}) · 1 of 2 runs" in text and f"run b-200 ({ids['b']}) · 1 of 1 run" in text
    assert f"run c-100 ({ids['c']}) · 1 of 1 run" in text
    assert re.search(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] ≠ other test examples run c-100", text)
    assert "Each cell is the latest of the system's finished runs on the row's test examples" in text
    md = out.with_suffix(".md").read_text()
    assert re.search(rf"≠ other test examples <sub>\[run c-100 \({ids['c']}\) · 1 of 1 run\]\(http://127\.0\.0\.1", md)
    # each cell and each run links to its run page in the MLflow UI's Model training view
    page = out.read_text()
    exp = c.run.experiment_id
    assert f"href='http://127.0.0.1:5000/#/experiments/{exp}/runs/{c.run.run_id}?workflowType=machine_learning'" in page
    # the runs table says what each system was trained on
    assert re.search(r"a-200 " + re.escape(store["systems"]["a"]) + r" train\+eval quick 64 ", text), text[-3000:]


def test_pick_best_takes_the_validation_metric_never_the_test_metric():
    """Two runs of a system on the row's set: `best` takes the higher val_accuracy, even where the other run's test
    accuracy is higher; runs without a validation score (evaluations) come last; `latest` takes the newer."""

    def run(name, start, val, test, digest="d200"):
        metrics = {"test_accuracy": test, **({"val_accuracy": val} if val is not None else {})}
        return R.RunRow(name, "imdb", name, "m", "train+eval", "quick", metrics, True, True, digest, "200", start)

    from harness.families.registry import get_task

    task = get_task("imdb")
    mine = [
        run("old", 1, 0.81, 0.70),
        run("new", 2, 0.75, 0.90),
        run("eval", 3, None, 0.95),
        run("x", 4, 0.99, 0.5, "d100"),
    ]
    assert R.choose(mine, "d200", "best", task).name == "old"  # best validation on the row's set
    assert R.choose(mine, "d200", "latest", task).name == "eval"
    assert R.choose(mine[2:3], "d200", "best", task).name == "eval"  # no validation score anywhere: the latest
    assert R.row_test_set([mine[0], mine[3], run("y", 5, 0.5, 0.5, "d100")]) == "d100"  # more runs, one system...
    other = R.RunRow("z", "imdb", "z", "other", "eval", "quick", {}, True, True, "d200", "200", 6)
    assert R.row_test_set([mine[0], mine[3], other]) == "d200"  # ...but two systems were scored on d200


def test_a_tiny_p_value_is_never_printed_as_zero(tmp_path):
    """A cell worse than the best at p = 2.6e-8 reads "▼ p < 0.001" in the browser, never "p=0.000"."""
    from harness.families.registry import get_task

    def row(name, system, value):
        return R.RunRow(
            name, "imdb", name, system, "train+eval", "quick", {"test_accuracy": value}, True, False, "d", "25000", 1
        )

    best, worse, near = row("r1", "big", 0.93), row("r2", "small", 0.85), row("r3", "mid", 0.925)
    cells = {
        ("imdb", "big"): R.Cell(best, 0.93, 0.92, 0.94, best=True),
        ("imdb", "small"): R.Cell(worse, 0.85, 0.84, 0.86, worse=2.6e-8),
        ("imdb", "mid"): R.Cell(near, 0.925, 0.915, 0.935, worse=0.04567),
    }
    report = R.Report(
        {"imdb": get_task("imdb")}, ["big", "mid", "small"], cells, {"imdb": [best, worse, near]}, {}, "x"
    )
    out = tmp_path / "r.html"
    R.write(report, out)
    text = _page_text(out, tmp_path)
    assert "▼ p < 0.001" in text and "▼ p=0.046" in text
    assert "p=0.000" not in text and "p=0.0000" not in text
    assert "▼ p < 0.001" in out.with_suffix(".md").read_text()


def test_what_was_trained_makes_a_system_and_a_users_file_never_makes_a_row():
    """A fine-tune, a search's retrain on other rows and a compressed variant of the same model are three systems;
    a run on a user's file is never the row's test set, even with more runs on it."""
    tags = {"model": "m", "mode": "train+eval", "profile": "quick"}
    tuned = R.system_label(tags, {"split.train.rows": "20000"})
    retrain = R.system_label(
        {**tags, "optuna.retrain_of_trial": "3", "optuna.study": "s"},
        {"split.train.rows": "256", "data.train_on_validation": "true"},
    )
    variant = R.system_label({"model": "runs:/abcdef1234", "mode": "eval", "harness.compress.method": "onnx-int8"}, {})
    assert tuned == "m · fine-tuned on 20,000 · quick"
    assert retrain == "m · fine-tuned on 256 (validation folded in) · quick · tune retrain (study s, trial 3)"
    assert variant == "model of run abcdef12 · onnx-int8 variant"
    assert len({tuned, retrain, variant}) == 3

    def row(name, system, digest, test_file=None):
        r = R.RunRow(name, "sst2", name, system, "eval", "quick", {}, True, False, digest, "872", 1)
        r.test_file = test_file
        return r

    runs = [row("f1", "x", "dfile", "/tmp/rt.jsonl"), row("f2", "y", "dfile", "/tmp/rt.jsonl"), row("t", "z", "dtest")]
    assert R.row_test_set(runs) == "dtest"

    # one label, other training rows: told apart by the rows' digest
    a = R.RunRow("a", "imdb", "a", "m · fine-tuned on 64 · quick", "train+eval", "quick", {}, True, True, "d", "96", 1)
    b = R.RunRow("b", "imdb", "b", "m · fine-tuned on 64 · quick", "train+eval", "quick", {}, True, True, "d", "96", 2)
    a.train_digest, b.train_digest = "aaaaaa11", "bbbbbb22"
    R._tell_apart([a, b])
    assert a.system != b.system and a.system.endswith("train rows aaaaaa")
