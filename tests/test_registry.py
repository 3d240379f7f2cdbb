"""The task registry: folder scan, validation naming file and field, `harness ls` / `harness validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from harness.errors import ConfigError
from harness.families.registry import load_task_file, registry, scan
from harness.paths import project_root

IMDB = yaml.safe_load((project_root() / "tasks/imdb/task.yaml").read_text())


def test_builtin_tasks_load():
    tasks = registry()
    assert {"imdb", "sst2"} <= set(tasks)
    imdb = tasks["imdb"]
    assert imdb.family == "classification" and imdb.labels == ["negative", "positive"]
    assert imdb.dataset.derive["validation"].from_ == "train"
    assert tasks["sst2"].dataset.splits["test"].local == "validation.jsonl.gz"


def _task(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / "tasks" / name / "task.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data))
    return path


FIX = "fix that field (see docs/tasks.md, 'Adding a task')"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d.update(famly="classification"),
            "{path}: unknown field 'famly' — remove it or fix its spelling (see docs/tasks.md, 'Adding a task')",
        ),
        (
            lambda d: d.pop("description"),
            "{path}: missing required field 'description' — add it (see docs/tasks.md, 'Adding a task')",
        ),
        (
            lambda d: d.update(family="regression"),
            "{path}: field 'family': unknown family 'regression' — use one of: causal_lm, classification, "
            "extractive_qa, masked_lm, summarization, translation",
        ),
        (
            lambda d: d.update(columns={"txt": "review"}),
            "{path}: field 'columns.txt' is not a role of family 'classification' — roles are: label, text, text_pair",
        ),
        (
            lambda d: d.update(metrics=["accuracy", "bleu"]),
            "{path}: field 'metrics': unknown metric 'bleu' for family 'classification' — use some of: accuracy, "
            "f1_macro, auroc, ece",
        ),
        (
            lambda d: d.update(metrics=[]),
            "{path}: field 'metrics' is empty — list some of: accuracy, f1_macro, auroc, ece, or leave it out for the "
            "family's default",
        ),
        (
            lambda d: d.update(main_metric="f1"),
            "{path}: field 'main_metric': 'f1' is not one of the task's metrics (accuracy, f1_macro, auroc, ece) — "
            "name one of them, or add it to `metrics`",
        ),
        (
            lambda d: d.update(direction="up"),
            "{path}: field 'direction': Input should be 'maximize' or 'minimize' — " + FIX,
        ),
        (
            lambda d: d["dataset"]["splits"].pop("test"),
            "{path}: field 'dataset': a dataset must define a `test` split — " + FIX,
        ),
        (
            lambda d: d["dataset"]["derive"]["validation"].update({"from": "dev"}),
            "{path}: field 'dataset': derived split 'validation' comes from unknown split 'dev' — " + FIX,
        ),
        (
            lambda d: d["config"]["data"].update(max_len=3),
            "{path}: field 'config': unknown config key 'data.max_len' — allowed keys at 'data': "
            + ", ".join(sorted(__import__("harness.config", fromlist=["DataConfig"]).DataConfig.model_fields)),
        ),
        (
            lambda d: d["profiles"]["quick"].update(optim={"learning_rate": 1}),
            "{path}: field 'profiles.quick': unknown config key 'optim.learning_rate' — allowed keys at 'optim': "
            "betas, eps, fused, lr, scheduler, warmup_ratio, weight_decay",
        ),
        (
            lambda d: d.update(labels=None),
            "{path}: missing field 'labels' — family 'classification' needs the list of label names",
        ),
        (lambda d: d.update(labels=["a", "a"]), "{path}: field '(top level)': labels must be unique — " + FIX),
        (
            lambda d: d["dataset"]["splits"]["train"].update(local=None, hub=None),
            "{path}: field 'dataset.splits.train': a split needs `local` (a file name) or `hub` (a hub split name) — "
            + FIX,
        ),
        (
            lambda d: d.update(include="../nowhere.yaml"),
            "{path}: field 'include': {tasks}/nowhere.yaml does not exist — give the path of a YAML file, relative to "
            "this task file",
        ),
    ],
)
def test_bad_task_file_names_file_and_field(tmp_path, mutate, message):
    """The whole message: the file, the field, what is wrong with it, and the fix; no library wording."""
    import copy

    data = copy.deepcopy(IMDB)
    mutate(data)
    path = _task(tmp_path, "broken", data)
    with pytest.raises(ConfigError) as e:
        load_task_file(path)
    assert e.value.message == message.format(path=path, tasks=path.parent.parent.resolve())
    assert "Value error" not in e.value.message


def test_family_defaults_fill_what_a_task_leaves_out(tmp_path):
    """A sentiment task in five lines: columns, metrics, main metric and direction come from the family."""
    path = _task(
        tmp_path,
        "tiny_sentiment",
        {
            "family": "classification",
            "description": "d",
            "labels": ["neg", "pos"],
            "dataset": {"local_dir": "x", "splits": {"train": {"local": "t.jsonl"}, "test": {"local": "e.jsonl"}}},
            "columns": {"text": "review"},
        },
    )
    task = load_task_file(path)
    assert task.columns == {"text": "review", "label": "label"}
    assert task.metrics == ["accuracy", "f1_macro", "auroc", "ece"]
    assert (task.main_metric, task.direction) == ("accuracy", "maximize")
    task = load_task_file(
        _task(
            tmp_path,
            "calibration",
            {
                "family": "classification",
                "description": "d",
                "labels": ["neg", "pos"],
                "main_metric": "ece",
                "metrics": ["ece", "accuracy"],
                "dataset": {"local_dir": "x", "splits": {"test": {"local": "e.jsonl"}}},
            },
        )
    )
    assert (task.main_metric, task.direction) == ("ece", "minimize")  # lower is better for calibration error
    squad_v2 = registry()["squad_v2"]
    assert squad_v2.metrics[:2] == ["exact", "f1"] and squad_v2.main_metric == "f1"
    assert registry()["squad"].metrics == ["exact_match", "f1"]
    assert registry()["clm_imdb"].direction == "minimize"


def test_include_merges_a_base_file_under_the_task(tmp_path):
    base = tmp_path / "tasks" / "_base" / "sentiment.yaml"
    base.parent.mkdir(parents=True)
    base.write_text(
        yaml.safe_dump(
            {
                "family": "classification",
                "labels": ["neg", "pos"],
                "dataset": {"local_dir": "x", "splits": {"test": {"local": "e.jsonl"}}},
                "config": {"data": {"max_length": 64, "batch_size": 8}},
            }
        )
    )
    path = _task(
        tmp_path,
        "mine",
        {"include": "../_base/sentiment.yaml", "description": "d", "config": {"data": {"max_length": 256}}},
    )
    task = load_task_file(path)
    assert task.labels == ["neg", "pos"] and task.config == {"data": {"max_length": 256, "batch_size": 8}}
    base.write_text(yaml.safe_dump({"include": "../mine/task.yaml"}))  # a cycle
    with pytest.raises(ConfigError) as e:
        load_task_file(path)
    assert e.value.message == (
        f"{base}: field 'include': {path.resolve()} includes itself (through 2 file(s)) — remove the cycle"
    )
    assert registry()["wmt16_ro_en"].dataset.hub_config == "ro-en"  # the shipped WMT16 tasks share a base


def test_not_yaml(tmp_path):
    path = tmp_path / "tasks/bad/task.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("family: [classification\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_task_file(path)


def test_extra_task_folder_and_duplicates(tmp_path, monkeypatch):
    _task(tmp_path, "imdb_copy", IMDB)
    monkeypatch.setenv("HARNESS_TASKS_PATH", str(tmp_path / "tasks"))
    assert "imdb_copy" in scan()
    _task(tmp_path / "more", "imdb", IMDB)
    monkeypatch.setenv("HARNESS_TASKS_PATH", str(tmp_path / "more" / "tasks"))
    with pytest.raises(ConfigError, match="also defined in"):
        scan()


def test_validate_command(tmp_path, monkeypatch, capsys):
    assert run_cli(["validate"]) == 0
    assert "ok: " in capsys.readouterr().out
    data = dict(IMDB, metrics=["accuracy", "bleu"])
    path = _task(tmp_path, "broken", data)
    monkeypatch.setenv("HARNESS_TASKS_PATH", str(tmp_path / "tasks"))
    assert run_cli(["validate"]) == 2
    captured = capsys.readouterr()
    assert str(tmp_path / "tasks") in captured.out  # which folders it read
    assert captured.err.strip() == (
        f"error: {path}: field 'metrics': unknown metric 'bleu' for family "
        "'classification' — use some of: accuracy, f1_macro, auroc, ece"
    )


def test_ls_lists_tasks(capsys):
    assert run_cli(["ls"]) == 0
    out = capsys.readouterr().out
    for word in ("imdb", "sst2", "classification", "stanfordnlp/imdb", "accuracy"):
        assert word in out
