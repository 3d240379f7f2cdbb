"""The task registry: folder scan, validation naming file and field, `harness ls` / `harness validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from harness.errors import ConfigError
from harness.paths import project_root
from harness.registry import load_task_file, registry, scan

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


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.update(famly="classification"), "unknown field 'famly'"),
        (lambda d: d.pop("metrics"), "missing required field 'metrics'"),
        (lambda d: d.update(family="regression"), "field 'family': unknown family 'regression'"),
        (lambda d: d.update(columns={"text": "text"}), "field 'columns' lacks 'label'"),
        (lambda d: d.update(metrics=["accuracy", "bleu"]), "unknown metric 'bleu'"),
        (lambda d: d.update(main_metric="f1"), "main_metric 'f1' is not one of metrics"),
        (lambda d: d["dataset"]["splits"].pop("test"), "must define a `test` split"),
        (lambda d: d["dataset"]["derive"]["validation"].update({"from": "dev"}), "unknown split 'dev'"),
        (lambda d: d["config"]["data"].update(max_len=3), "field 'config': unknown config key 'data.max_len'"),
        (lambda d: d["profiles"]["quick"].update(optim={"learning_rate": 1}), "field 'profiles.quick': unknown config key 'optim.learning_rate'"),
        (lambda d: d.update(labels=None), "missing field 'labels'"),
        (lambda d: d["dataset"]["splits"]["train"].update(local=None, hub=None), "needs `local`"),
    ],
)
def test_bad_task_file_names_file_and_field(tmp_path, mutate, fragment):
    import copy

    data = copy.deepcopy(IMDB)
    mutate(data)
    path = _task(tmp_path, "broken", data)
    with pytest.raises(ConfigError) as e:
        load_task_file(path)
    assert str(path) in e.value.message and fragment in e.value.message


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
    err = capsys.readouterr().err
    assert str(path) in err and "unknown metric 'bleu'" in err


def test_ls_lists_tasks(capsys):
    assert run_cli(["ls"]) == 0
    out = capsys.readouterr().out
    for word in ("imdb", "sst2", "classification", "stanfordnlp/imdb", "accuracy"):
        assert word in out
