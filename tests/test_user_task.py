"""A new task written from the docs alone, outside the checkout: its task file is the example in docs/tasks.md
("Adding a task"), its data a user's CSV files (real SST-2 sentences under the example's column names);
`harness validate`, `harness check` and `harness run` with the quick profile work on it as the page says."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient

from harness.paths import project_root


def readme_task_yaml() -> str:
    text = (project_root() / "docs" / "tasks.md").read_text(encoding="utf-8")
    section = text.split("## Adding a task", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["review", "stars"])
        w.writeheader()
        for r in rows:
            w.writerow({"review": r["sentence"], "stars": ["negative", "positive"][r["label"]]})


@pytest.fixture
def user_task(tmp_path, data_dir, monkeypatch) -> Path:
    tasks, data = tmp_path / "my-tasks", tmp_path / "my-data"
    (tasks / "my_sentiment").mkdir(parents=True)
    (tasks / "my_sentiment" / "task.yaml").write_text(readme_task_yaml(), encoding="utf-8")

    def rows(name: str, n: int) -> list[dict]:
        with gzip.open(data_dir / f"sentiment/sst2/{name}.jsonl.gz", "rt", encoding="utf-8") as f:
            return [json.loads(line) for _, line in zip(range(n), f)]

    _write_csv(data / "my_sentiment" / "train.csv", rows("train", 800))
    _write_csv(data / "my_sentiment" / "test.csv", rows("validation", 200))
    monkeypatch.setenv("HARNESS_TASKS_PATH", str(tasks))
    monkeypatch.setenv("HARNESS_DATA_DIR", str(data))
    return tasks


def test_task_from_the_readme_validates_checks_and_runs(user_task, tmp_path, capsys):
    assert run_cli(["validate"]) == 0
    out = capsys.readouterr().out
    assert f"  {user_task}\n" in out and "my_sentiment" in out

    assert run_cli(["check", "my_sentiment"]) == 0
    out = capsys.readouterr().out
    assert "train: 720 rows of 800 · local " in out and "validation: 80 rows of 800" in out
    assert "test: 200 rows of 200 · local " in out
    assert re.search(r"labels: negative \d+ \(\d+\.\d%\), positive \d+", out)
    assert "example 1: text: " in out and "| label: " in out
    assert re.search(r"text: min \d+ · median \d+ · p90 \d+ · p99 \d+ · max \d+ · budget 64 · ", out)
    assert "no MLflow run was made" in out
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert not (tmp_path / "mlruns.db").exists()

    assert run_cli(["run", "my_sentiment", "profile=quick", f"tracking.tracking_uri={uri}"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("my_sentiment").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["family"] == "classification"
    assert run.data.params["model.name"] == "sentence-transformers/all-MiniLM-L6-v2"  # the quick profile's model
    assert run.data.params["data.max_length"] == "64" and run.data.params["split.test.rows"] == "200"
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    correct = [row[table["columns"].index("correct")] for row in table["data"]]
    assert run.data.metrics["test_accuracy"] == pytest.approx(sum(correct) / len(correct), abs=1e-6)
    # SST-2 sentences after 45 steps: the model ranks them well above chance (the interval excludes 0.5)
    assert run.data.metrics["test_auroc_ci_low"] > 0.5
