"""Transfer modes (`model.mode`): which weights train, what the run says about it, and how the model is logged and
evaluated again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import in_dir, run_cli, tiny_args
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from harness.models.classification import SequenceClassifier

OPTIM = {
    "lr": 1e-2,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "scheduler": "linear",
    "warmup_ratio": 0.0,
}


def _module(tiny_model: Path, transfer: dict | None) -> SequenceClassifier:
    return SequenceClassifier(
        labels=["negative", "positive"], optim=OPTIM, model_path=str(tiny_model), transfer=transfer
    )


@pytest.mark.parametrize(
    "transfer, trainable_names",
    [
        (None, lambda n: True),
        ({"mode": "frozen"}, lambda n: n.startswith("model.classifier.")),
        ({"mode": "lora", "lora_r": 4}, lambda n: "lora_" in n or ".modules_to_save." in n),
        ({"mode": "prompt_tuning", "virtual_tokens": 5}, lambda n: "prompt_encoder" in n or ".modules_to_save." in n),
    ],
    ids=["full", "frozen", "lora", "prompt_tuning"],
)
def test_each_mode_trains_only_its_weights(tiny_model, transfer, trainable_names):
    m = _module(tiny_model, transfer)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all(trainable_names(n) for n in names), names
    info = m.transfer_info
    assert info.trainable == sum(p.numel() for n, p in m.named_parameters() if p.requires_grad and "original" not in n)
    assert info.head == ["classifier"]
    if transfer is None:
        assert info.trainable == info.total
    else:
        assert 0 < info.trainable_pct < 5
    if transfer and transfer["mode"] == "lora":
        assert info.lora_targets == ["query", "value"]  # peft's choice for BERT, stated on the run
        assert sum(".lora_A." in n for n in names) == 2 * 2  # 2 layers x (query, value)


@pytest.fixture(scope="module")
def work(tmp_path_factory, data_dir, tiny_model):
    base = tmp_path_factory.mktemp("transfer")
    uri = f"sqlite:///{base / 'mlruns.db'}"
    return {"dir": base, "uri": uri, "client": MlflowClient(uri), "data_dir": data_dir, "tiny": tiny_model}


def _train(work: dict, **extra: str):
    args = tiny_args(work["data_dir"], work["tiny"], work["uri"], log_model="true", **{"optim.lr": "1e-2", **extra})
    with in_dir(work["dir"]):
        assert run_cli(["run", "imdb", *args]) == 0
    client = work["client"]
    exp = client.get_experiment_by_name("imdb")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]


def _eval_again(work: dict, run_id: str):
    args = [a for a in tiny_args(work["data_dir"], work["tiny"], work["uri"]) if not a.startswith("model.")]
    with in_dir(work["dir"]):
        assert run_cli(["eval", "imdb", "--model", f"runs:/{run_id}", *args]) == 0
    client = work["client"]
    exp = client.get_experiment_by_name("imdb")
    again = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert again.data.tags["harness.source_run_id"] == run_id
    return again


def _losses(client: MlflowClient, run_id: str) -> list[float]:
    table = json.loads(Path(client.download_artifacts(run_id, "predictions/test.json")).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["text"])]


def _model_files(client: MlflowClient, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, "model/artifacts/weights")}


@pytest.mark.parametrize("mode", ["lora", pytest.param("prompt_tuning", marks=pytest.mark.slow)])
def test_an_adapter_is_logged_as_an_adapter_and_evaluates_to_the_same_predictions(work, mode):
    run = _train(work, **{"model.mode": mode, "model.virtual_tokens": "8"})
    assert run.info.status == "FINISHED" and run.data.params["model.mode"] == mode
    m = run.data.metrics
    assert 0 < m["params_trainable_pct"] < 5 and m["params_trainable"] < m["params_total"]
    assert m["train_peak_memory_mb"] > 50 and run.data.tags["train_peak_memory"] == "process_rss"
    assert run.data.tags["model.head_modules"] == "classifier"
    if mode == "lora":
        assert run.data.tags["model.lora_targets_resolved"] == "query,value"
    files = _model_files(work["client"], run.info.run_id)
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "harness.json"} <= files
    assert "model.safetensors" not in files  # the base model is named, not copied
    again = _eval_again(work, run.info.run_id)
    before, after = _losses(work["client"], run.info.run_id), _losses(work["client"], again.info.run_id)
    assert len(before) == 96 and max(abs(a - b) for a, b in zip(before, after)) <= 1e-5
    assert again.data.metrics["test_accuracy"] == m["test_accuracy"]


def test_frozen_mode_leaves_the_backbone_as_it_was(work):
    run = _train(work, **{"model.mode": "frozen"})
    path = work["client"].download_artifacts(
        run.info.run_id, "model/artifacts/weights/model.safetensors", str(work["dir"] / "dl")
    )
    trained = load_file(path)
    original = load_file(str(work["tiny"] / "model.safetensors"))
    backbone = [k for k in trained if not k.startswith("classifier.")]
    assert backbone and all(
        (trained[k] == original[k.removeprefix("bert.")]).all() for k in backbone if k.removeprefix("bert.") in original
    )
    assert sum(k.removeprefix("bert.") in original for k in backbone) >= 30  # the comparison covered the backbone
    assert run.data.metrics["params_trainable"] == 32 * 2 + 2  # the classifier: 32 x 2 weights + 2 biases


@pytest.mark.slow
def test_lora_merged_on_request_is_a_full_model_with_the_same_predictions(work):
    run = _train(work, **{"model.mode": "lora", "model.merge": "true"})
    files = _model_files(work["client"], run.info.run_id)
    assert "model.safetensors" in files and "adapter_config.json" not in files
    again = _eval_again(work, run.info.run_id)
    before, after = _losses(work["client"], run.info.run_id), _losses(work["client"], again.info.run_id)
    assert max(abs(a - b) for a, b in zip(before, after)) <= 1e-4


def test_a_mode_for_a_family_without_modes(work, capsys):
    args = tiny_args(work["data_dir"], work["tiny"], work["uri"], **{"model.mode": "lora"})
    with in_dir(work["dir"]):
        rc = run_cli(["run", "mlm_imdb", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert (
        "error: model.mode=lora is not available for masked_lm tasks — use model.mode=full, or a task of the "
        "classification, extractive_qa, summarization, translation families"
    ) in err
    args = tiny_args(work["data_dir"], work["tiny"], work["uri"], **{"model.mode": "frozen"})
    with in_dir(work["dir"]):
        rc = run_cli(["run", "cnn_dailymail", *args])
    err = capsys.readouterr().err
    assert rc == 2 and "error: model.mode=frozen is not available for summarization" in err


def test_the_modes_search_space_is_valid_and_samples_each_modes_parameters_only_for_it():
    import optuna

    from harness.families.registry import registry
    from harness.paths import hpo_dir
    from harness.tuning.space import check_space, load_space, suggest

    space = load_space(hpo_dir() / "classification-modes.yaml")
    check_space(space, registry()["imdb"], [])  # every key a config key, every end of every range accepted
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(40):
        params = suggest(study.ask(), space)
        seen.setdefault(params["model.mode"], set()).update(params)
    assert set(seen) == {"full", "frozen", "lora", "prompt_tuning"}
    assert {"model.lora_r", "model.lora_alpha", "model.lora_dropout"} <= seen["lora"]
    assert "model.virtual_tokens" in seen["prompt_tuning"] and "model.lora_r" not in seen["prompt_tuning"]
    assert not {"model.lora_r", "model.virtual_tokens"} & (seen["full"] | seen["frozen"])
