"""`harness compress <run> --method prune-structured`: a model that is smaller and faster for real, not a dense file of
zeros: whole feed-forward neurons and vocabulary rows removed (optionally whole layers), then a short recovery
fine-tune with the source model as teacher.

- Feed-forward neurons (`--sparsity`, the share removed, the same in every layer so the config states the new
  `intermediate_size` and the model saves and loads as a normal one): a neuron's importance is the product of the
  norms of its input row and output column; the least important go.
- Vocabulary rows: a small encoder's word-embedding table is most of its size (MiniLM: 11.7M of 22.7M parameters).
  Only the tokens the task's training data uses are kept (and the special tokens); every other id maps to [UNK]
  through `vocab_map.npy` (old id -> new id), which the model applies to its input ids: the tokenizer is unchanged,
  so a text is cut exactly as before.
- `--layers N`: also keep N of the layers (spread as distillation keeps them).
- Recovery: the pruned model trains on the source run's data and schedule with Hinton's loss against the source model
  (harness/models/distill.py), as `--method distill` does.

Attention heads are not removed: BERT-style configs derive the head size from `hidden_size / num_attention_heads`,
so a model with fewer heads of the same size could not be saved and loaded as a normal model of its architecture.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from harness.errors import ConfigError

VOCAB_MAP = "vocab_map.npy"


def _feed_forward_pairs(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module, str]]:
    """(module, attribute) of each layer's feed-forward input and output projection (BERT-style encoders)."""
    pairs = []
    for m in model.modules():
        inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
        if inter is not None and out is not None and isinstance(getattr(inter, "dense", None), torch.nn.Linear):
            if isinstance(getattr(out, "dense", None), torch.nn.Linear):
                pairs.append((inter, "dense", out, "dense"))
    return pairs


def prune_feed_forward(model: torch.nn.Module, sparsity: float) -> tuple[int, int]:
    """Remove the share `sparsity` of every layer's feed-forward neurons (least important first); returns the
    neurons per layer (before, after). The config's `intermediate_size` states the new width."""
    from transformers.pytorch_utils import prune_linear_layer

    pairs = _feed_forward_pairs(model)
    if not pairs:
        raise ConfigError(
            f"--method prune-structured does not know the feed-forward layers of {type(model).__name__}",
            "use it on a BERT-style encoder (the default model and its family), or --method distill",
        )
    before = getattr(pairs[0][0], pairs[0][1]).out_features
    keep = max(1, int(round(before * (1 - sparsity))))
    for inter, a, out, b in pairs:
        w_in, w_out = getattr(inter, a), getattr(out, b)
        score = w_in.weight.detach().norm(dim=1) * w_out.weight.detach().norm(dim=0)
        index = torch.sort(torch.topk(score, keep).indices).values
        setattr(inter, a, prune_linear_layer(w_in, index, dim=0))
        setattr(out, b, prune_linear_layer(w_out, index, dim=1))
    model.config.intermediate_size = keep
    return before, keep


def used_tokens(rows: Any, tokenizer: Any) -> np.ndarray:
    """The token ids a tokenized split uses, with the tokenizer's special tokens."""
    ids = np.unique(rows.sequences["input_ids"][0])
    special = np.asarray([i for i in tokenizer.all_special_ids if i is not None], dtype=np.int64)
    return np.unique(np.concatenate([ids, special]))


def trim_vocabulary(model: torch.nn.Module, keep: np.ndarray, unk_id: int) -> np.ndarray:
    """Keep only the embedding rows `keep` (sorted old ids); returns the map old id -> new id (unknown -> [UNK])."""
    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    keep = np.asarray(sorted(set(int(i) for i in keep if 0 <= i < old) | {unk_id}), dtype=np.int64)
    table = torch.nn.Embedding(len(keep), emb.weight.shape[1], padding_idx=None)
    table.weight.data = emb.weight.data[torch.from_numpy(keep)].clone()
    model.set_input_embeddings(table)
    model.config.vocab_size = len(keep)
    new_of = {int(o): n for n, o in enumerate(keep)}
    vocab_map = np.full(old, new_of[unk_id], dtype=np.int64)
    vocab_map[keep] = np.arange(len(keep))
    if getattr(model.config, "pad_token_id", None) is not None:
        model.config.pad_token_id = int(vocab_map[model.config.pad_token_id])
    return vocab_map


class Remapped(torch.nn.Module):
    """A model whose vocabulary was trimmed, behind the original tokenizer's ids (`vocab_map` old -> new)."""

    def __init__(self, model: torch.nn.Module, vocab_map: np.ndarray):
        super().__init__()
        self.model = model
        self.config = model.config
        self.register_buffer("vocab_map", torch.from_numpy(vocab_map.astype(np.int64)), persistent=False)

    def forward(self, input_ids: torch.Tensor, **batch: Any) -> SequenceClassifierOutput:
        return self.model(input_ids=self.vocab_map[input_ids], **batch)

    def save_pretrained(self, folder: Any, **kwargs: Any) -> None:
        folder = Path(folder)
        self.model.save_pretrained(folder, **kwargs)
        np.save(folder / VOCAB_MAP, self.vocab_map.cpu().numpy().astype(np.int32))  # 4 bytes an id of the tokenizer


def load_vocab_map(folder: Path) -> Optional[np.ndarray]:
    path = Path(folder) / VOCAB_MAP
    return np.load(path).astype(np.int64) if path.is_file() else None


def build_student(
    teacher: torch.nn.Module, train_rows: Any, tokenizer: Any, sparsity: float, layers: Optional[int]
) -> tuple[torch.nn.Module, dict[str, str]]:
    """The pruned copy of `teacher` (before recovery) and what was removed, in words."""
    from harness.models.distill import layer_count, parameters, shallow_student

    notes: dict[str, str] = {}
    if layers is not None:
        _, n = layer_count(teacher)
        student, kept = shallow_student(teacher, layers)
        notes["layers"] = f"the teacher's layers {', '.join(map(str, kept))} of {n}"
    else:
        student = copy.deepcopy(teacher)
    before, after = prune_feed_forward(student, sparsity)
    notes["feed_forward"] = f"{after} of {before} neurons per layer kept (norm importance)"
    vocab_before = student.get_input_embeddings().weight.shape[0]
    vocab_map = trim_vocabulary(student, used_tokens(train_rows, tokenizer), tokenizer.unk_token_id)
    notes["vocabulary"] = (
        f"{student.config.vocab_size} of {vocab_before} tokens kept (those of the training data and the special "
        "ones; any other maps to [UNK])"
    )
    notes["parameters"] = json.dumps({"teacher": parameters(teacher), "student": parameters(student)})
    return Remapped(student, vocab_map), notes
