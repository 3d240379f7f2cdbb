"""Zero-shot scoring with language models, shared by the bias probes.

- `causal_logprob`: the sum of a causal LM's token log-probabilities of a continuation given a context
  (log P(continuation | context)); with an empty context the text is scored after the beginning-of-sequence token,
  so its first token counts too. Batched, right-padded, one forward pass per batch.
- `pseudo_loglik`: the pseudo-log-likelihood of a masked LM (Salazar et al. 2020, "Masked Language Model
  Scoring"): mask one token at a time and sum the log-probability of the original token at the masked position.
  Every (sentence, position) copy is one row of a batch, so a batch scores many positions at once.

- `masked_continuation`: for masked LMs what `causal_logprob` is for causal ones: the pseudo-log-likelihood of a
  continuation's tokens read after its context (only the continuation's tokens are masked, one at a time).

All return float64 numpy arrays and run in inference mode under the model's own dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def causal_token_ids(
    tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str]
) -> list[tuple[list[int], int]]:
    """(ids, number of leading context ids) per pair. The context is tokenized alone and the continuation after it,
    so the split point is exact; with no context the sequence starts with BOS (or EOS for tokenizers without one)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for ctx, cont in zip(contexts, continuations):
        ctx_ids = tokenizer(ctx, add_special_tokens=False)["input_ids"] if ctx else []
        if not ctx_ids:
            ctx_ids = [start] if start is not None else []
        cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        out.append((ctx_ids + cont_ids, len(ctx_ids)))
    return out


@torch.inference_mode()
def causal_logprob(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 32,
    return_counts: bool = False,
) -> Any:
    """log P(continuation | context) for each pair (sum over the continuation's tokens)."""
    pairs = causal_token_ids(tokenizer, contexts, continuations)
    scores = np.zeros(len(pairs))
    counts = np.zeros(len(pairs), dtype=np.int64)
    order = np.argsort([-len(p[0]) for p in pairs], kind="stable")  # long first: similar lengths share a batch
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = _device(model)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        longest = max(len(pairs[i][0]) for i in idx)
        ids = torch.full((len(idx), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for r, i in enumerate(idx):
            seq = pairs[i][0]
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        # the token at position t is predicted at t-1; only the continuation's positions are normalised over the
        # vocabulary (the context's are not needed, and that is most of the work for long contexts)
        want = torch.zeros((len(idx), longest - 1), dtype=torch.bool)
        for r, i in enumerate(idx):
            seq, n_ctx = pairs[i]
            want[r, n_ctx - 1 : len(seq) - 1] = True
            counts[i] = len(seq) - n_ctx
        want = want.to(dev)
        picked = torch.log_softmax(logits[:, :-1][want].float(), dim=-1)
        target = ids[:, 1:].to(dev)[want]
        tok_lp = picked.gather(-1, target.unsqueeze(-1)).squeeze(-1).double().cpu()
        row_of = torch.nonzero(want)[:, 0].cpu()
        sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, row_of, tok_lp)
        for r, i in enumerate(idx):
            scores[i] = float(sums[r])
    return (scores, counts) if return_counts else scores


@torch.inference_mode()
def pseudo_loglik(
    model: Any,
    tokenizer: Any,
    token_ids: Sequence[Sequence[int]],
    positions: Optional[Sequence[Sequence[int]]] = None,
    batch_size: int = 64,
) -> np.ndarray:
    """PLL of each token sequence (which already holds the special tokens, e.g. [CLS] ... [SEP]), summed over
    `positions` (default: every position that is not a special token)."""
    if tokenizer.mask_token_id is None:
        raise ValueError("pseudo-log-likelihood needs a tokenizer with a mask token")
    special = set(tokenizer.all_special_ids)
    jobs: list[tuple[int, int]] = []  # (sentence, position)
    for s, ids in enumerate(token_ids):
        pos = positions[s] if positions is not None else [p for p, t in enumerate(ids) if t not in special]
        jobs.extend((s, p) for p in pos)
    scores = np.zeros(len(token_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = _device(model)
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        longest = max(len(token_ids[s]) for s, _ in chunk)
        ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        originals = []
        for r, (s, p) in enumerate(chunk):
            seq = list(token_ids[s])
            originals.append(seq[p])
            seq[p] = tokenizer.mask_token_id
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        rows = torch.arange(len(chunk))
        at = torch.tensor([p for _, p in chunk])
        logp = torch.log_softmax(logits[rows, at], dim=-1).cpu()
        got = logp[rows, torch.tensor(originals)].double().numpy()
        for (s, _), v in zip(chunk, got):
            scores[s] += v
    return scores


def masked_continuation(
    model: Any, tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(PLL of each continuation's tokens, their number), each pair read as `[CLS] context continuation [SEP]`."""
    ids, positions = [], []
    for ctx, cont in zip(contexts, continuations):
        framed = tokenizer(ctx)["input_ids"]
        head, end = framed[:-1], framed[-1:]  # the context with its leading special tokens; the trailing [SEP]
        tail = tokenizer(cont, add_special_tokens=False)["input_ids"]
        ids.append(head + tail + end)
        positions.append(list(range(len(head), len(head) + len(tail))))
    scores = pseudo_loglik(model, tokenizer, ids, positions, batch_size)
    return scores, np.array([len(p) for p in positions], dtype=np.int64)
