"""`harness compare` and `seeds=N`: the paired tests' error rates, sacreBLEU's numbers exactly, runs and files."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import in_dir, run_cli, tiny_args
from mlflow.tracking import MlflowClient

from harness.metrics import paired

# ---- the tests themselves: false positives near alpha, real differences found ----------------------------------------


def test_paired_tests_hold_their_false_positive_rate():
    """200 simulated pairs of systems with no true difference (each example right with probability 0.7, the two
    systems correlated as real systems are): each test rejects at alpha=0.05 about 5% of the time, never much more."""
    rng = np.random.default_rng(1)
    rejected = {"bootstrap": 0, "ar": 0, "mcnemar": 0}
    for _ in range(200):
        base = rng.random(300) < 0.7
        a = np.where(rng.random(300) < 0.8, base, rng.random(300) < 0.7).astype(float)
        b = np.where(rng.random(300) < 0.8, base, rng.random(300) < 0.7).astype(float)
        score = paired.mean_of("correct")
        x, y = {"correct": a}, {"correct": b}
        seed = int(rng.integers(1 << 30))
        rejected["bootstrap"] += paired.paired_bootstrap(score, x, y, resamples=500, seed=seed).p_value < 0.05
        rejected["ar"] += paired.approximate_randomization(score, x, y, trials=500, seed=seed) < 0.05
        rejected["mcnemar"] += paired.mcnemar(a, b) < 0.05
    rates = {k: v / 200 for k, v in rejected.items()}
    assert all(r <= 0.07 for r in rates.values()), rates
    assert all(r > 0 for r in rates.values()), rates  # they do reject sometimes: the tests are not vacuous


def test_a_real_difference_is_found_with_an_interval_around_it():
    rng = np.random.default_rng(2)
    a = (rng.random(1000) < 0.70).astype(float)
    b = np.where(rng.random(1000) < 0.25, 1.0, a)  # B fixes a quarter of A's errors: +7.5 points expected
    r = paired.paired_bootstrap(paired.mean_of("correct"), {"correct": a}, {"correct": b})
    assert r.p_value < 0.01 and r.ci_low > 0 and r.ci_low < r.delta < r.ci_high
    assert r.delta == pytest.approx(b.mean() - a.mean())
    assert paired.mcnemar(a, b) < 1e-6
    assert paired.approximate_randomization(paired.mean_of("correct"), {"correct": a}, {"correct": b}) < 0.01


def test_holm_adjustment():
    assert paired.holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert paired.holm([0.5]) == [0.5]


# ---- BLEU and chrF: sacreBLEU's paired tests, exactly ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mt_files(tmp_path_factory, data_dir) -> dict:
    """Real newstest2016 en-ro references; three systems: the English source copied (a floor), and two that
    translate a different share of the sentences correctly."""
    out = tmp_path_factory.mktemp("mt")
    with gzip.open(data_dir / "translation/wmt16_en_ro/test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line)["translation"] for _, line in zip(range(400), f)]
    rng = np.random.default_rng(0)
    files = {"ref": [r["ro"] for r in rows], "copy": [r["en"] for r in rows]}
    for name, share in (("half", 0.5), ("third", 0.33)):
        files[name] = [r["ro"] if rng.random() < share else r["en"] for r in rows]
    paths = {}
    for name, lines in files.items():
        paths[name] = out / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def test_bleu_and_chrf_equal_sacrebleu_paired_bs_and_ar(mt_files, capsys):
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    args = [
        "compare",
        "--predictions",
        str(mt_files["copy"]),
        str(mt_files["half"]),
        "--references",
        str(mt_files["ref"]),
        "--metric",
        "bleu",
        "chrf",
        "--json",
        "--no-log",
    ]
    assert run_cli(args) == 0
    out = json.loads(capsys.readouterr().out)
    got = out["systems"][0]["metrics"]
    refs = mt_files["ref"].read_text().splitlines()
    systems = [(p.name, p.read_text().splitlines()) for p in (mt_files["copy"], mt_files["half"])]
    for kind, key in (("bs", "p_value"), ("ar", "p_approximate_randomization")):
        _, scores = PairedTest(systems, {"BLEU": BLEU(), "chrF2": CHRF()}, references=[refs], test_type=kind)()
        assert got["bleu"][key] == scores["BLEU"][1].p_value
        assert got["chrf"][key] == scores["chrF2"][1].p_value
        assert got["bleu"]["value"] == pytest.approx(scores["BLEU"][1].score, abs=1e-9)
    assert got["bleu"]["delta"] == pytest.approx(scores["BLEU"][1].score - scores["BLEU"][0].score, abs=1e-9)
    assert got["bleu"]["ci_low"] < got["bleu"]["delta"] < got["bleu"]["ci_high"]
    # and the command-line tool prints the same p-values
    cli = Path(sys.executable).with_name("sacrebleu")
    for kind, key in (("--paired-bs", "p_value"), ("--paired-ar", "p_approximate_randomization")):
        text = subprocess.run(
            [
                str(cli),
                str(mt_files["ref"]),
                "-i",
                str(mt_files["copy"]),
                str(mt_files["half"]),
                kind,
                "-m",
                "bleu",
                "chrf",
                "-f",
                "text",
            ],
            capture_output=True,
            text=True,
        ).stdout
        printed = [float(p) for p in re.findall(r"p = ([0-9.]+)", text)]
        assert printed == [round(got["bleu"][key], 4), round(got["chrf"][key], 4)], text


def test_several_systems_get_holm_adjusted_p_values(mt_files, capsys):
    args = [
        "compare",
        "--predictions",
        str(mt_files["copy"]),
        str(mt_files["third"]),
        str(mt_files["half"]),
        "--references",
        str(mt_files["ref"]),
        "--metric",
        "chrf",
        "--json",
        "--no-log",
    ]
    assert run_cli(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["holm"] is True and [s["name"] for s in out["systems"]] == ["third.txt", "half.txt"]
    r = out["systems"][0]["metrics"]["chrf"]
    assert r["p_value"] >= r["p_value_unadjusted"] and "Holm-adjusted over 2 systems" in r["test"]
    # every p-value the row shows is adjusted: the approximate-randomization ones too, with the same procedure
    ar = [s["metrics"]["chrf"]["p_approximate_randomization_unadjusted"] for s in out["systems"]]
    assert [s["metrics"]["chrf"]["p_approximate_randomization"] for s in out["systems"]] == paired.holm(ar)


def test_file_comparisons_are_signed_everywhere(mt_files, tmp_path, capsys):
    """A comparison of files says how each metric was computed: sacreBLEU's signature for BLEU/chrF, ROUGE's
    engine and Lsum split, in the JSON, on the console and on the MLflow run."""
    from sacrebleu.metrics import BLEU

    files = [str(mt_files["copy"]), str(mt_files["half"]), "--references", str(mt_files["ref"])]
    args = ["compare", "--predictions", *files, "--metric", "bleu", "rouge", "--split", "newline"]
    assert run_cli([*args, "--json", "--no-log"]) == 0
    out = json.loads(capsys.readouterr().out)
    refs = mt_files["ref"].read_text().splitlines()
    bleu = BLEU()
    bleu.corpus_score(mt_files["half"].read_text().splitlines(), [refs])
    assert out["signatures"]["bleu"] == str(bleu.get_signature())
    assert out["systems"][0]["metrics"]["bleu"]["signature"] == str(bleu.get_signature())
    rouge = out["signatures"]["rougeLsum"]
    assert "engine:rouge-score-rs" in rouge and "lsum-split:newline" in rouge and rouge == out["signatures"]["rouge1"]
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert run_cli([*args, "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert f"signature (rouge1, rouge2, rougeL, rougeLsum): {rouge}" in printed and str(bleu.get_signature()) in printed
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("compare").experiment_id])
    assert run.data.tags["metric.rougeLsum.signature"] == rouge and run.data.params["rouge_split"] == "newline"
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "compare/result.json")).read_text())
    assert saved["signatures"] == out["signatures"]


# ---- runs: the same examples, or refused -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, tiny_model) -> dict:
    work = tmp_path_factory.mktemp("compare-runs")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    with in_dir(work):
        for lr in ("1e-3", "3e-3"):
            assert run_cli(["run", "imdb", *tiny_args(data_dir, tiny_model, uri, **{"optim.lr": lr})]) == 0
        assert run_cli(["run", "imdb", *tiny_args(data_dir, tiny_model, uri, **{"data.test_size": "64"})]) == 0
        assert run_cli(["run", "sst2", *tiny_args(data_dir, tiny_model, uri)]) == 0
    client = MlflowClient(uri)
    found = {}
    for exp in ("imdb", "sst2"):
        for r in client.search_runs([client.get_experiment_by_name(exp).experiment_id]):
            key = (
                exp
                if exp == "sst2"
                else ("imdb64" if r.data.params["data.test_size"] == "64" else f"imdb-lr{r.data.params['optim.lr']}")
            )
            found[key] = r
    return {"uri": uri, "work": work, "client": client, **found}


def test_compare_two_runs(runs, capsys):
    a, b = runs["imdb-lr0.001"], runs["imdb-lr0.003"]
    with in_dir(runs["work"]):
        assert run_cli(["compare", a.info.run_id, b.info.run_id, "--tracking-uri", runs["uri"], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["baseline"] == a.info.run_name and out["examples"] == 96
    got = out["systems"][0]["metrics"]
    for m in ("accuracy", "f1_macro", "auroc", "ece"):
        assert got[m]["value"] == pytest.approx(b.data.metrics[f"test_{m}"], abs=1e-6), m
        assert got[m]["delta"] == pytest.approx(b.data.metrics[f"test_{m}"] - a.data.metrics[f"test_{m}"], abs=1e-6)
        assert got[m]["ci_low"] <= got[m]["delta"] <= got[m]["ci_high"]
    assert got["accuracy"]["test"].startswith("McNemar exact")
    # the comparison is an MLflow run of its own, tagged with both runs
    client = runs["client"]
    (rec,) = client.search_runs([client.get_experiment_by_name("compare").experiment_id])
    assert rec.data.tags["compare.runs"] == f"{a.info.run_id},{b.info.run_id}" and rec.info.status == "FINISHED"
    files = {f.path for f in client.list_artifacts(rec.info.run_id, "compare")}
    assert files == {"compare/result.json", "compare/disagreements.json"}
    assert [f.path for f in client.list_artifacts(rec.info.run_id, "plots")] == ["plots/differences.png"]
    assert rec.data.metrics["delta_accuracy"] == pytest.approx(got["accuracy"]["delta"])
    # without --json: the comparison's run, and the two runs side by side, each a link into the Model training view
    with in_dir(runs["work"]):
        assert run_cli(["compare", a.info.run_id, b.info.run_id, "--tracking-uri", runs["uri"]]) == 0
    out = capsys.readouterr().out
    assert re.search(r"open it: .*/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning", out)
    assert f"/#/compare-runs?runs=%5B%22{a.info.run_id}%22%2C%22{b.info.run_id}%22%5D" in out
    assert "workflowType=machine_learning" in out.split("the runs side by side:")[1]


@pytest.mark.parametrize(
    "which, message",
    [
        (("imdb-lr0.001", "imdb64"), "imdb64 scored other test examples than"),
        (("imdb-lr0.001", "sst2"), "the runs are of different tasks"),
    ],
)
def test_runs_that_cannot_be_compared(runs, capsys, which, message):
    ids = [runs[w].info.run_id for w in which]
    with in_dir(runs["work"]):
        assert run_cli(["compare", *ids, "--tracking-uri", runs["uri"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    if which[1] == "imdb64":
        da = runs[which[0]].data.params["split.test.digest"]
        db = runs[which[1]].data.params["split.test.digest"]
        name_a, name_b = runs[which[0]].info.run_name, runs[which[1]].info.run_name
        if name_b == name_a:  # two runs of one name are told apart by their ids
            name_b = f"{name_b} ({runs[which[1]].info.run_id[:8]})"
        assert err[0] == (
            f"error: {name_b} scored other test examples than {name_a} (split digest {db} vs {da}) — "
            "compare runs evaluated on the same split and subset (same data.test_size, "
            "data.test_file)"
        )
    else:
        assert message in err[0]


def test_unknown_run_and_run_without_predictions(runs, capsys):
    a = runs["imdb-lr0.001"].info.run_id
    with in_dir(runs["work"]):
        assert run_cli(["compare", a, "0123456789abcdef", "--tracking-uri", runs["uri"]]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: MLflow run '0123456789abcdef' not found in {runs['uri']} — check the run id (harness prints it "
            "at the end of a run) and MLFLOW_TRACKING_URI"
        )
        client = runs["client"]
        exp = client.get_experiment_by_name("imdb").experiment_id
        bare = client.create_run(exp, tags={"task": "imdb"}).info.run_id  # a run that never evaluated
        client.set_terminated(bare, "FAILED")
        assert run_cli(["compare", a, bare, "--tracking-uri", runs["uri"]]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: MLflow run '{bare}' has no per-example predictions (predictions/test.json; status FAILED) — "
            f"compare finished evaluation runs; to get predictions for a logged model: harness eval imdb --model "
            f"runs:/{bare}"
        )
        client.delete_run(bare)


def test_squad_prediction_files(data_dir, tmp_path, capsys):
    """Two systems' SQuAD predictions (question id -> answer) against the official dev file."""
    from harness.data.squad import load_json, parse_squad

    gold = data_dir / "qa/squad_v1.1/dev-v1.1.json.gz"
    sq = parse_squad(load_json(gold, "SQuAD"), str(gold))
    ids, answers = sq.rows["id"][:3000], [a["text"][0] for a in sq.rows["answers"][:3000]]
    rng = np.random.default_rng(0)
    a = {q: (ans if rng.random() < 0.5 else "nothing") for q, ans in zip(ids, answers)}
    b = {q: (ans if rng.random() < 0.6 else "nothing") for q, ans in zip(ids, answers)}
    for name, preds in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(preds))
    assert (
        run_cli(
            [
                "compare",
                "--predictions",
                str(tmp_path / "a.json"),
                str(tmp_path / "b.json"),
                "--gold",
                str(gold),
                "--json",
                "--no-log",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 10570  # every gold question; those without a prediction score 0, as officially
    em = out["systems"][0]["metrics"]["exact_match"]
    assert em["delta"] > 0 and em["p_value"] < 0.01


# ---- seeds -----------------------------------------------------------------------------------------------------------


def test_seeds_nest_summarise_resume_and_compare(data_dir, tiny_model, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["run", "imdb", *tiny_args(data_dir, tiny_model, uri), "seeds=2"]
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"accuracy +\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] · seed std \d\.\d{4} · sampling std "
        r"\d\.\d{4} · (seed variation|test-set sampling) dominates",
        out,
    ), out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("imdb").experiment_id
    (parent,) = client.search_runs([exp], filter_string="tags.mode = 'seeds'")
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and sorted(c.data.tags["seed"] for c in children) == ["42", "43"]
    m = parent.data.metrics
    values = [c.data.metrics["test_accuracy"] for c in children]
    assert m["test_accuracy_mean"] == pytest.approx(np.mean(values))
    assert m["test_accuracy_seed_std"] == pytest.approx(np.std(values, ddof=1))
    assert m["test_accuracy_ci_low"] <= m["test_accuracy_mean"] <= m["test_accuracy_ci_high"]
    # an interrupted study would go on; a finished one is a new parent whose seeds... are run again
    client.set_terminated(parent.info.run_id, "KILLED")
    assert run_cli(args) == 0
    assert out.count("seed 42:") == 1 and "seed 42: finished earlier, not run again" in capsys.readouterr().out
    assert len(client.search_runs([exp], filter_string="tags.mode = 'seeds'")) == 1
    assert len(client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")) == 2
    # two seed studies compare over examples and seeds
    assert run_cli(["run", "imdb", *tiny_args(data_dir, tiny_model, uri, **{"optim.lr": "3e-3"}), "seeds=2"]) == 0
    other = [
        r for r in client.search_runs([exp], filter_string="tags.mode = 'seeds'") if r.info.run_id != parent.info.run_id
    ][0]
    capsys.readouterr()
    assert run_cli(["compare", parent.info.run_id, other.info.run_id, "--tracking-uri", uri, "--json", "--no-log"]) == 0
    got = json.loads(capsys.readouterr().out)["systems"][0]["metrics"]["accuracy"]
    assert got["test"].startswith("paired bootstrap over examples and seeds (2 vs 2 seeds")


def test_bad_seeds_value(capsys):
    assert run_cli(["run", "imdb", "seeds=1"]) == 2
    assert capsys.readouterr().err.strip() == "error: seeds=1: a seed study needs at least 2 seeds — e.g. seeds=3"
