"""Config layering, override parsing and validation."""

from __future__ import annotations

import pytest
import yaml
from conftest import run_cli

from harness.config import RunConfig, parse_override, resolve_run_config
from harness.errors import ConfigError
from harness.families.registry import get_task


@pytest.mark.parametrize(
    "item, expected",
    [
        ("trainer.max_epochs=2", ("trainer.max_epochs", 2)),
        ("optim.lr=1e-4", ("optim.lr", 1e-4)),
        ("log_model=true", ("log_model", True)),
        ("data.test_size=null", ("data.test_size", None)),
        ("model.name=org/model-1", ("model.name", "org/model-1")),
        ("tracking.tracking_uri=sqlite:///a=b.db", ("tracking.tracking_uri", "sqlite:///a=b.db")),
        ("trainer.devices=[0,1]", ("trainer.devices", [0, 1])),
    ],
)
def test_parse_override(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["trainer.max_epochs", "=3", "trainer..x=1"])
def test_malformed_override(item):
    with pytest.raises(ConfigError):
        parse_override(item)


def test_layers_in_order(monkeypatch):
    task = get_task("imdb")
    cfg = resolve_run_config(task, ["profile=quick"])
    assert cfg.profile == "quick"
    assert cfg.data.truncation == "head_tail"  # task config
    assert cfg.data.train_size == 3000 and cfg.optim.lr == 1e-4  # task profiles.quick
    assert cfg.data.eval_batch_size == 64  # configs/profiles/quick.yaml
    assert cfg.tracking.tracking_uri == "sqlite:///mlruns.db"  # default
    full = resolve_run_config(task, ["profile=full"])
    assert full.data.max_length == 512 and full.trainer.precision == "bf16-mixed" and full.log_model
    assert full.data.train_size is None
    monkeypatch.setenv("HARNESS_DATA_DIR", "/data/from/env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    cfg = resolve_run_config(task, ["profile=quick", "data.train_size=10"])
    assert cfg.data.data_dir == "/data/from/env" and cfg.tracking.tracking_uri == "sqlite:///elsewhere.db"
    assert cfg.data.train_size == 10  # command line beats the task profile
    cfg = resolve_run_config(task, ["profile=quick", "data.data_dir=/cli"])
    assert cfg.data.data_dir == "/cli"  # command line beats the environment


def test_unknown_key_in_each_layer_names_its_source():
    task = get_task("imdb")
    with pytest.raises(ConfigError, match=r"override 'data.max_len=3': unknown config key 'data.max_len'.*max_length"):
        resolve_run_config(task, ["data.max_len=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'colour'.*allowed keys at the top level"):
        resolve_run_config(task, ["colour=blue"])
    task.profiles["quick"] = {"trainer": {"epochs": 1}}
    with pytest.raises(ConfigError, match=r"profiles.quick: unknown config key 'trainer.epochs'"):
        resolve_run_config(task, ["profile=quick"])


def test_section_given_a_value():
    with pytest.raises(ConfigError, match="'trainer' is a section"):
        resolve_run_config(get_task("imdb"), ["trainer=3"])


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("trainer.max_epochs=two", "'trainer.max_epochs'"),
        ("optim.lr=-1", "'optim.lr'"),
        ("data.truncation=middle", "'data.truncation'"),
        ("eval.bootstrap_resamples=10", "'eval.bootstrap_resamples'"),
    ],
)
def test_bad_values(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_run_config(get_task("imdb"), ["profile=quick", item])


def test_attention_kernel_and_compile_settings():
    cfg = resolve_run_config(
        get_task("imdb"), ["profile=quick", "model.sdpa_backend=efficient", "trainer.compile=true"]
    )
    assert cfg.model.sdpa_backend == "efficient" and cfg.trainer.compile is True
    with pytest.raises(ConfigError, match="'model.sdpa_backend'"):
        resolve_run_config(get_task("imdb"), ["profile=quick", "model.sdpa_backend=fastest"])
    with pytest.raises(ConfigError, match="set model.attn_implementation=sdpa"):
        resolve_run_config(get_task("imdb"), ["model.sdpa_backend=flash", "model.attn_implementation=eager"])


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'fast'.*full, quick"):
        resolve_run_config(get_task("imdb"), ["profile=fast"])


def test_identity_hash_tracks_what_changes_results():
    a = RunConfig(task="imdb")
    assert a.identity_hash() == RunConfig(task="imdb").identity_hash()
    assert a.identity_hash() != RunConfig(task="imdb", seed=1).identity_hash()
    b = RunConfig(task="imdb")
    b.tracking.run_name = "renamed"
    b.tracking.keep_checkpoints = True
    assert a.identity_hash() == b.identity_hash()  # naming and housekeeping do not change the result


def test_credentials_never_reach_logs():
    from harness.config import redact_uri

    assert redact_uri("postgresql://bob:s3cret@db:5432/mlflow") == "postgresql://bob:***@db:5432/mlflow"
    assert redact_uri("sqlite:///mlruns.db") == "sqlite:///mlruns.db"
    assert redact_uri("https://host/x") == "https://host/x"


def test_config_command_redacts(capsys):
    from conftest import run_cli

    assert run_cli(["config", "imdb", "tracking.tracking_uri=postgresql://bob:s3cret@db/mlflow"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "bob:***@db" in out


def test_config_lists_only_the_settings_of_the_tasks_family(capsys):
    """`harness config` (and a run's params) leave out other families' settings; they are still validated."""
    assert run_cli(["config", "imdb"]) == 0
    imdb = yaml.safe_load(capsys.readouterr().out)
    assert imdb["data"]["truncation"] == "head_tail" and imdb["eval"]["ece_bins"] == 15
    for section, key in (
        ("data", "doc_stride"),
        ("data", "mlm_probability"),
        ("eval", "n_best"),
        ("model", "from_scratch"),
    ):
        assert key not in imdb[section], (section, key)
    assert "generation" not in imdb
    assert run_cli(["config", "squad"]) == 0
    squad = yaml.safe_load(capsys.readouterr().out)
    assert squad["data"]["doc_stride"] == 64 and squad["eval"]["n_best"] == 20 and "ece_bins" not in squad["eval"]
    assert run_cli(["config", "multi30k_en_de"]) == 0
    mt = yaml.safe_load(capsys.readouterr().out)
    assert mt["generation"]["max_new_tokens"] == 64 and "max_length" not in mt["data"]
    assert run_cli(["config", "imdb", "data.doc_stride=-1"]) == 2  # hidden, still validated
    assert "'data.doc_stride'" in capsys.readouterr().err
