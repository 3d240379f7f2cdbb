"""Shared fixtures: offline hub, temporary MLflow store and working dir, real data, a tiny model built in code."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# In CI (CI=true, as .ci/run sets it) a test that needs something the CI machine must have fails instead of being
# skipped, so a green CI run means the real-data tests ran. Read before CI is set to "1" below for plain output.
STRICT = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require(what: str) -> None:
    """Skip the test (locally, with the reason printed by -ra) or fail it (in CI): `what` is missing."""
    if STRICT:
        pytest.fail(f"{what} (CI must have it, so this test fails instead of being skipped)", pytrace=False)
    pytest.skip(what)


# Set before anything imports transformers/datasets: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["CI"] = os.environ.get("CI") or "1"  # plain progress lines
os.environ.pop("MLFLOW_TRACKING_URI", None)


def _data_dir() -> Path | None:
    if os.environ.get("HARNESS_TEST_DATA") == "none":  # the data folder hidden (tests of the CI guard itself)
        return None
    env = os.environ.get("HARNESS_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "sentiment" / "imdb" / "train.jsonl.gz").is_file():
            return cand.resolve()
    return None


DATA_DIR = _data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None:
        require("real datasets not found (set HARNESS_DATA_DIR or put ../shared/data beside the repo)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every test runs in its own folder with its own MLflow store, and no inherited data dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HARNESS_RUN_ID", raising=False)
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def build_tiny(out: Path, kind: str) -> Path:
    """A 2-layer model with hidden size 32 (random weights, seeded) and the MiniLM tokenizer, saved like any model.

    kind: `encoder` (BertModel: new heads on top, as for fine-tuning), `masked` (BertForMaskedLM), `classifier`
    (BertForSequenceClassification with negative/positive labels) or `causal` (LlamaForCausalLM, [SEP] as end of
    sequence).
    """
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from harness.models.loading import packaged_path

    tok = AutoTokenizer.from_pretrained(str(packaged_path("sentence-transformers/all-MiniLM-L6-v2")))
    torch.manual_seed(0)
    shape = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512
    )
    if kind == "causal":
        tok.eos_token = "[SEP]"
        config = LlamaConfig(
            vocab_size=len(tok),
            num_key_value_heads=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.sep_token_id,
            bos_token_id=tok.cls_token_id,
            tie_word_embeddings=True,
            **shape,
        )
        model = LlamaForCausalLM(config)
    else:
        labels = (
            {"num_labels": 2, "id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
            if kind == "classifier"
            else {}
        )
        cls = {"encoder": BertModel, "masked": BertForMaskedLM, "classifier": BertForSequenceClassification}[kind]
        archs = {"architectures": [cls.__name__]} if kind != "encoder" else {}
        model = cls(BertConfig(vocab_size=tok.vocab_size, **shape, **labels, **archs))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT encoder without task heads."""
    return build_tiny(tmp_path_factory.mktemp("tiny-bert"), "encoder")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-llama"), "causal")


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-mlm"), "masked")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-cls"), "classifier")


@contextlib.contextmanager
def in_dir(path: Path):
    """Run the block with `path` as the working directory (module-scoped fixtures outlive the per-test chdir)."""
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(cwd)


def run_cli(args: list[str]) -> int:
    from harness.cli import main

    return main(args)


def tiny_args(data_dir: Path, tiny_model: Path, tracking_uri: str, **extra: str) -> list[str]:
    """Overrides for a fast run of a tiny model on a few hundred real rows."""
    base = {
        "model.name": str(tiny_model),
        "data.data_dir": str(data_dir),
        "data.train_size": "160",
        "data.validation_size": "64",
        "data.test_size": "96",
        "data.max_length": "64",
        "data.batch_size": "16",
        "optim.lr": "1e-3",
        "trainer.log_every_n_steps": "2",
        "trainer.checkpoint_every_n_steps": "4",
        "trainer.precision": "32-true",
        "tracking.tracking_uri": tracking_uri,
        "tracking.system_metrics_interval": "1",
        "eval.bootstrap_resamples": "200",
        "profile": "quick",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for servers and rendezvous the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
