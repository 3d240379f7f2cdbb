"""The command line starts fast: building the parser imports no heavy library, and the light commands (`--help`, `ls`,
`score` on text metrics and SQuAD) never import torch or Lightning at all. Each command runs in a fresh interpreter
and reports what it imported (`sys.modules`) when it returns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "pytorch_lightning", "transformers", "mlflow", "optuna", "datasets", "pandas")

PROBE = """
import json, sys
from harness.cli import build_parser, main
build_parser()
parser_only = sorted(m for m in {heavy!r} if m in sys.modules)
try:
    rc = main({argv!r})
except SystemExit as e:
    rc = e.code
print("@@" + json.dumps({{"rc": rc, "parser": parser_only, "all": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def _imports(argv: list[str], cwd: Path, env: dict | None = None) -> dict:
    import os

    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY, argv=argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("@@")), None)
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(line[2:])


@pytest.fixture
def texts(tmp_path: Path) -> tuple[Path, Path]:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("the cat sat on the mat .\nit rained all day in the city .\n")
    ref.write_text("a cat sat on the mat .\nit rained all day long in the city .\n")
    return hyp, ref


@pytest.mark.parametrize("metric", ["rouge", "bleu", "chrf"])
def test_scoring_text_metrics_imports_neither_torch_nor_lightning(metric, texts, tmp_path):
    hyp, ref = texts
    got = _imports(["score", metric, "--predictions", str(hyp), "--references", str(ref), "--json"], tmp_path)
    assert got["rc"] == 0 and got["parser"] == []
    assert not {"torch", "lightning", "transformers", "mlflow"} & set(got["all"]), got


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["ls"],
        ["run", "--help"],
        ["compress", "--help"],
        ["config", "imdb"],  # resolving a config asked torch whether a GPU is there (4 s): not on a machine without one
        ["config", "squad", "profile=full", "data.max_length=256"],
        ["validate"],  # read every task, profile and probe file: no pandas
        ["check", "--help"],
        ["score", "--help"],
    ],
)
def test_the_parser_and_the_light_commands_import_no_heavy_library(argv, tmp_path):
    got = _imports(argv, tmp_path)
    assert got["rc"] == 0 and got["parser"] == [] and got["all"] == [], got


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "onlyone"],  # an argument error: one line, no store opened
        ["compare", "--predictions", "a.txt"],
        ["report", "--pick", "worst"],
        ["config", "imdb", "data.device_resident=maybe"],
    ],
)
def test_argument_errors_import_no_heavy_library(argv, tmp_path):
    got = _imports(argv, tmp_path)
    assert got["rc"] == 2 and got["all"] == [], got


def test_scoring_squad_reads_the_gold_file_without_torch(data_dir, tmp_path):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"56be4db0acb8001400a502ec": "Denver Broncos"}))
    got = _imports(
        ["score", "squad", "--predictions", str(preds), "--json"], tmp_path, {"HARNESS_DATA_DIR": str(data_dir)}
    )
    assert got["rc"] == 0 and got["parser"] == []
    assert not {"torch", "lightning", "transformers", "mlflow"} & set(got["all"]), got
