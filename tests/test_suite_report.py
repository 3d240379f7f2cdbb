"""`harness suite` (nested runs, failure isolation, resume) and `harness report` (the leaderboard, in a browser)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import in_dir, require, run_cli, tiny_args
from mlflow.tracking import MlflowClient


def _suite_args(data_dir: Path, tiny_model: Path, uri: str) -> list[str]:
    return [a for a in tiny_args(data_dir, tiny_model, uri) if not a.startswith("model.name=")]


@pytest.fixture(scope="module")
def suite_store(tmp_path_factory, data_dir, tiny_model) -> dict:
    """The shipped sentiment suite with the tiny model: imdb, sst2, and the imdb model evaluated on sst2."""
    work = tmp_path_factory.mktemp("suite")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    with in_dir(work):
        assert run_cli(["suite", "sentiment", "--model", str(tiny_model), *_suite_args(data_dir, tiny_model, uri)]) == 0
    return {"work": work, "uri": uri, "client": MlflowClient(uri)}


def test_suite_runs_every_entry_as_a_nested_run(suite_store):
    client = suite_store["client"]
    (parent,) = client.search_runs([client.get_experiment_by_name("suites").experiment_id])
    assert parent.info.status == "FINISHED" and parent.data.tags["suite"] == "sentiment"
    children = {}
    for exp in ("imdb", "sst2"):
        for r in client.search_runs([client.get_experiment_by_name(exp).experiment_id]):
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
            children[r.data.tags["suite.entry"]] = r
    assert set(children) == {"imdb", "sst2", "imdb-on-sst2"}
    transfer = children["imdb-on-sst2"]
    assert transfer.data.tags["mode"] == "eval" and transfer.data.params["model.name"] == (
        f"runs:/{children['imdb'].info.run_id}"
    )
    m = parent.data.metrics
    assert m["sst2.accuracy"] == children["sst2"].data.metrics["test_accuracy"]
    assert m["imdb-on-sst2.accuracy_ci_low"] == children["imdb-on-sst2"].data.metrics["test_accuracy_ci_low"]
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "suite/summary.json")).read_text())
    assert [s["entry"] for s in summary] == ["imdb", "sst2", "imdb-on-sst2"]


def test_a_failed_entry_does_not_stop_the_others_and_a_rerun_skips_what_finished(
    tmp_path, data_dir, tiny_model, monkeypatch, capsys
):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "mixed.yaml").write_text(
        "description: one good entry, one that cannot run\n"
        "entries:\n"
        "  - {name: no-data, task: squad_v2}\n"  # SQuAD 2.0 is not in the offline data
        "  - {name: good, task: sst2}\n"
    )
    monkeypatch.setenv("HARNESS_SUITES_PATH", str(suites))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["suite", "mixed", "--model", str(tiny_model), *_suite_args(data_dir, tiny_model, uri)]
    assert run_cli(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and err[0].startswith("error: 1 of 2 suite entries failed: no-data: task 'squad_v2': split")
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("suites").experiment_id])
    assert parent.info.status == "FAILED"
    (good,) = client.search_runs([client.get_experiment_by_name("sst2").experiment_id])
    assert good.info.status == "FINISHED"
    # the same command again goes on in the same parent run: the good entry is not run again
    assert run_cli(args) == 2
    assert "good: finished earlier" in capsys.readouterr().out
    assert len(client.search_runs([client.get_experiment_by_name("suites").experiment_id])) == 1
    assert len(client.search_runs([client.get_experiment_by_name("sst2").experiment_id])) == 1


def test_rerun_of_an_interrupted_suite_skips_finished_entries(suite_store, data_dir, tiny_model, capsys):
    client = suite_store["client"]
    (parent,) = client.search_runs([client.get_experiment_by_name("suites").experiment_id])
    client.set_terminated(parent.info.run_id, "KILLED")  # as if stopped before its summary
    with in_dir(suite_store["work"]):
        assert (
            run_cli(
                [
                    "suite",
                    "sentiment",
                    "--model",
                    str(tiny_model),
                    *_suite_args(data_dir, tiny_model, suite_store["uri"]),
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 3
    assert len(client.search_runs([client.get_experiment_by_name("suites").experiment_id])) == 1


def test_suite_naming_an_unknown_task(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.yaml").write_text("description: x\nentries:\n  - {name: a, task: imbd}\n")
    monkeypatch.setenv("HARNESS_SUITES_PATH", str(tmp_path))
    assert run_cli(["suite", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'bad.yaml'}: entry 'a' names unknown task 'imbd' — known tasks: ")
    assert run_cli(["suite", "nope"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown suite 'nope' — known suites: bad, bias, generation, qa, "
        "sentiment (files in suites/, or HARNESS_SUITES_PATH)"
    )


# ---- the report ------------------------------------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        require("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return path


def _browser(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chrome'}",
    ]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_in_a_browser(suite_store, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert run_cli(["report", "--tracking-uri", suite_store["uri"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| imdb | accuracy (max) |" in printed and out.is_file() and out.with_suffix(".md").is_file()
    dom = _browser(["--dump-dom", out.as_uri()], tmp_path).stdout
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    client = suite_store["client"]
    sst2 = {
        r.data.tags["suite.entry"]: r for r in client.search_runs([client.get_experiment_by_name("sst2").experiment_id])
    }
    value = sst2["sst2"].data.metrics["test_accuracy"]
    assert re.search(r"Leaderboard task metric .*sst2 accuracy \(maximize\)", text)
    assert f"{value:.4f} [" in text
    assert (
        "not comparable: reported on the GLUE test server (this task's test split is the GLUE validation set); "
        "the run scored a subset of the test split"
    ) in text
    assert "Maas et al. 2011, Learning Word Vectors for Sentiment Analysis, Table 2" in text
    shot = tmp_path / "report.png"
    _browser([f"--screenshot={shot}", "--window-size=1200,900", out.as_uri()], tmp_path)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
    (rep,) = client.search_runs([client.get_experiment_by_name("reports").experiment_id])
    assert {a.path for a in client.list_artifacts(rep.info.run_id, "report")} == {
        "report/report.html",
        "report/report.md",
    }


def test_report_of_an_empty_experiment(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    client.create_experiment("imdb")
    assert run_cli(["report", "--tracking-uri", uri, "--experiment", "imdb", "--no-log"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: no finished task runs to report in imdb ({uri}) — run some first (make eval TASK=imdb), or name "
        "the experiments or runs to report"
    )
