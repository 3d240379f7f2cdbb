"""Data resolution, schema checks, derived splits and subsets, on the real datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.config import DeriveSpec, resolve_run_config
from harness.data.base import split_tokens
from harness.data.sources import derive_indices, load_task_data, load_test_file, stratified_indices
from harness.errors import DataError
from harness.families.registry import get_task


def _cfg(task, data_dir, *extra):
    return resolve_run_config(task, ["profile=quick", f"data.data_dir={data_dir}", *extra])


def test_imdb_quick_splits_are_stratified_disjoint_and_stable(data_dir):
    task = get_task("imdb")
    cfg = _cfg(task, data_dir)
    data = load_task_data(task, cfg, ("train", "validation", "test"))
    train, val, test = data["train"], data["validation"], data["test"]
    assert (train.rows, val.rows, test.rows) == (3000, 500, 2000)
    for s in (train, val, test):
        assert sorted(np.bincount(s.dataset["label"]).tolist()) == [s.rows // 2, s.rows // 2]  # balanced like IMDB
        assert set(s.dataset.column_names) == {"text", "label", "_row"}
    assert not set(train.dataset["_row"]) & set(val.dataset["_row"])  # validation comes out of train
    assert train.source_sha256 == "e94e2c6278b41ccfe66157209c6096b05845ca7303cc1c70f8f040adc3d4c5bf"  # PROVENANCE.md
    assert test.source_rows == 25000
    again = load_task_data(task, cfg, ("train", "validation", "test"))
    assert again["train"].digest() == train.digest() and again["test"].digest() == test.digest()
    other_seed = load_task_data(task, _cfg(task, data_dir, "seed=7"), ("test",))
    assert other_seed["test"].digest() == test.digest()  # subsets do not move with the run seed
    lin = test.lineage()
    assert lin["rows"] == 2000 and "stratified subset of 2000" in lin["selection"]


def test_sst2_uses_glue_validation_as_test(data_dir):
    task = get_task("sst2")
    data = load_task_data(task, _cfg(task, data_dir), ("train", "validation", "test"))
    assert data["test"].rows == 872 and data["test"].source.endswith("validation.jsonl.gz")
    assert set(data["train"].dataset.column_names) == {"text", "label", "_row"}  # sentence -> text role


def test_full_profile_uses_all_rows(data_dir):
    task = get_task("imdb")
    cfg = resolve_run_config(task, ["profile=full", f"data.data_dir={data_dir}"])
    data = load_task_data(task, cfg, ("train", "validation", "test"))
    assert (data["train"].rows, data["validation"].rows, data["test"].rows) == (24000, 1000, 25000)


def test_stratified_indices_keep_proportions():
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    idx = stratified_indices(labels, 100, np.random.default_rng(0))
    assert len(idx) == 100 and len(set(idx)) == 100
    assert np.bincount(labels[idx]).tolist() == [70, 20, 10]


def test_group_derive_keeps_groups_whole():
    import datasets

    groups = [f"article-{i // 7}" for i in range(700)]
    ds = datasets.Dataset.from_dict({"title": groups, "label": [0] * 700})
    keep, derived = derive_indices(ds, DeriveSpec(**{"from": "train", "size": 0.2, "group_by": "title"}), "v", 0)
    assert len(keep) + len(derived) == 700 and not set(keep) & set(derived)
    kept_groups = {groups[i] for i in keep}
    assert not kept_groups & {groups[i] for i in derived}
    assert 140 <= len(derived) < 147


def test_test_file_with_label_names(data_dir, tmp_path):
    f = tmp_path / "reviews.jsonl"
    f.write_text(
        "\n".join(
            json.dumps({"text": t, "label": lab})
            for t, lab in [("great", "positive"), ("awful", "negative"), ("fine", 1)]
        )
        + "\n"
    )
    split = load_test_file(get_task("imdb"), f)
    assert split.dataset["label"] == [1, 0, 1] and split.source_kind == "file"


def test_unknown_label_name_in_file(tmp_path):
    f = tmp_path / "reviews.jsonl"
    f.write_text(json.dumps({"text": "ok", "label": "neutral"}) + "\n")
    with pytest.raises(DataError, match=r"row 1 has label 'neutral', not in the task's label set"):
        load_test_file(get_task("imdb"), f)


def test_missing_column_in_file(tmp_path):
    f = tmp_path / "reviews.csv"
    f.write_text("review,label\nnice,1\n")
    with pytest.raises(DataError, match=r"no column 'text'.*columns there: review, label"):
        load_test_file(get_task("imdb"), f)


def test_hub_is_skipped_offline_and_named(tmp_path):
    task = get_task("imdb")
    cfg = resolve_run_config(task, ["profile=quick", f"data.data_dir={tmp_path}"])
    with pytest.raises(DataError) as e:
        load_task_data(task, cfg, ("test",))
    msg = e.value.message
    assert str(tmp_path / "sentiment/imdb/test.jsonl.gz") in msg and "hf://datasets/stanfordnlp/imdb" in msg


@pytest.mark.parametrize(
    "how, head, expected",
    [
        ("head", None, [0, 1, 2, 3]),
        ("tail", None, [6, 7, 8, 9]),
        ("head_tail", 1, [0, 7, 8, 9]),
        ("head_tail", None, [0, 7, 8, 9]),
        ("head_tail", 4, [0, 1, 2, 3]),
    ],
)
def test_split_tokens(how, head, expected):
    assert split_tokens(list(range(10)), 4, how, head) == expected
    assert split_tokens([1, 2], 4, how, head) == [1, 2]


def test_head_tail_encoding_keeps_special_tokens(data_dir):
    from transformers import AutoTokenizer

    from harness.data.classification import ClassificationDataModule
    from harness.models.loading import packaged_path

    task = get_task("imdb")
    cfg = _cfg(task, data_dir, "data.max_length=32", "data.test_size=50")
    data = load_task_data(task, cfg, ("test",))
    tok = AutoTokenizer.from_pretrained(str(packaged_path("sentence-transformers/all-MiniLM-L6-v2")))
    dm = ClassificationDataModule(cfg, task, data, tok)
    dm.setup()
    enc = dm.encoded["test"]
    assert enc.lengths.max() == 32
    row = enc[int(np.argmax(enc.lengths))]
    assert row["input_ids"][0] == tok.cls_token_id and row["input_ids"][-1] == tok.sep_token_id
    text = data["test"].dataset["text"][int(np.argmax(enc.lengths))]
    full = tok(text, add_special_tokens=False)["input_ids"]
    assert list(row["input_ids"][1:8]) == full[:7]  # head: a quarter of the 30-token budget
    assert list(row["input_ids"][8:-1]) == full[-23:]  # tail: the rest


def test_tokenization_is_cached(data_dir, monkeypatch):
    """The second DataModule over the same rows, tokenizer and settings reads the cached ids, not the tokenizer."""
    from transformers import AutoTokenizer

    from harness.data.classification import ClassificationDataModule
    from harness.models.loading import packaged_path

    task = get_task("imdb")
    cfg = _cfg(task, data_dir, "data.test_size=300")
    tok = AutoTokenizer.from_pretrained(str(packaged_path("sentence-transformers/all-MiniLM-L6-v2")))
    first = ClassificationDataModule(cfg, task, load_task_data(task, cfg, ("test",)), tok)
    first.setup()

    def fail(self, batch):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(ClassificationDataModule, "encode", fail)
    second = ClassificationDataModule(cfg, task, load_task_data(task, cfg, ("test",)), tok)
    second.setup()
    assert np.array_equal(
        first.encoded["test"].sequences["input_ids"][0], second.encoded["test"].sequences["input_ids"][0]
    )
    other = _cfg(task, data_dir, "data.test_size=300", "data.max_length=96")
    with pytest.raises(AssertionError, match="tokenized again"):  # other settings: a different cache entry
        ClassificationDataModule(other, task, load_task_data(task, other, ("test",)), tok).setup()


def test_two_derived_splits_from_one_source_do_not_overlap(data_dir):
    from harness.config import DeriveSpec

    task = get_task("imdb")
    task.dataset.splits.pop("test")
    task.dataset.derive["test"] = DeriveSpec(**{"from": "train", "size": 500, "stratify": True})
    cfg = _cfg(task, data_dir, "data.train_size=null", "data.validation_size=null", "data.test_size=null")
    data = load_task_data(task, cfg, ("train", "validation", "test"))
    rows = {n: set(data[n].dataset["_row"]) for n in ("train", "validation", "test")}
    assert (len(rows["validation"]), len(rows["test"]), len(rows["train"])) == (1000, 500, 23500)
    assert not rows["validation"] & rows["test"] and not (rows["validation"] | rows["test"]) & rows["train"]
