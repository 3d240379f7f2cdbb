"""Perl ROUGE-1.5.5's per-example numbers for See et al.'s three systems, kept as a test reference.

`make test-papers` checks that harness's port (`eval.rouge_engine=pyrouge`, harness/metrics/rouge155.py) gives,
for every one of the 11,490 pairs of each system, the precision, recall and F of ROUGE-1, ROUGE-2, ROUGE-L (the text
as one sentence) and ROUGE-L over sentences that Perl ROUGE-1.5.5 gives. Perl takes minutes per system, so its
numbers are computed once, here, and stored (tests/data/see2017_rouge155_perl.npz: each value times 100,000, as the
integer Perl prints it to five decimals); a test-papers case runs Perl again on a sample and checks the file still
holds what Perl says.

    python scripts/rouge155_reference.py [--out tests/data/see2017_rouge155_perl.npz]
"""

from __future__ import annotations

import argparse
import json
import lzma
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "see2017_cnndm_test_outputs.json.xz"
OUT = REPO / "tests" / "data" / "see2017_rouge155_perl.npz"
SYSTEMS = ("baseline", "pointer-gen", "pointer-gen-cov")
TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def main() -> None:
    from harness.metrics.generation import rouge_scores

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    outputs = json.loads(lzma.decompress(DATA.read_bytes()))
    arrays = {}
    for system in SYSTEMS:
        started = time.perf_counter()
        scores = rouge_scores(outputs["reference"], outputs[system], "newline", "pyrouge-perl")
        for kind in TYPES:
            arrays[f"{system}/{kind}"] = np.rint(scores[kind] * 100000).astype(np.int32)  # [n, (P, R, F)]
        print(f"{system}: {len(outputs[system])} pairs in {time.perf_counter() - started:.0f} s", flush=True)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
