"""Build the GPU check bundle (`make gpu-bundle`): what `make gpu-check` needs on a bare, offline GPU host beyond
the host's image, within 64 MiB.

    python scripts/gpu_bundle.py [--dest .gpu-bundle] [--python-version 3.12] [--have torch lightning ...]

Parts (each listed with its size at the end; the build fails over the budget):

- `wheels/`: harness's own wheel (no dependencies) and the few wheels the training path cannot do without that the
  image lacks (pydantic for the config, rich for the console, accelerate for the Trainer baseline, and what they
  need), for the host's Python (`--python-version`) and platform. Everything the image has (`--have`, and whatever
  only those packages need) is left out; so are MLflow, Optuna, datasets, evaluate and pandas: the check does not
  import them (its record goes to an offline journal that `harness sync` sends to MLflow back here).
- `model/`: the default model (`sentence-transformers/all-MiniLM-L6-v2`, the encoder without a task head) in
  bfloat16 safetensors, xz-compressed (`model.safetensors.xz`, unpacked by the check before it loads), with its
  tokenizer. It loads as float32 for training.
- `data/imdb.npz.xz`: the IMDB splits of the `full` profile (train minus the 1,000 held-out validation reviews,
  validation, all 25,000 test reviews) tokenized exactly as `harness run imdb profile=full` does (the same rows,
  head+tail truncation to 512 tokens), as uint16 ids with offsets, labels and source rows, xz-compressed; the split
  digests and counts go to `bundle.json` (the run's lineage).
The bundle and the checkout's tracked files travel together in one device call (64 MiB in all): the build fails
when they pass 56 MiB.

- `bundle.json`: the manifest (parts and sizes, model, task settings, split lineage, the builder's versions).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wheels import ROOT, norm, target_flags  # noqa: E402

BUDGET_MIB = 64.0  # the bundle alone
CARRY_MIB = 56.0  # the bundle and the checkout's tracked files together: a device call carries 64 MiB in all
# what the bare image has (the GPU notes): left out, with everything only these need
IMAGE = ("torch", "lightning", "pytorch-lightning", "transformers", "torchmetrics", "sacrebleu", "numpy")
# what the check's code path imports beyond the image
NEEDS = ("pydantic>=2", "rich", "accelerate", "psutil")
ALWAYS = ("pydantic", "rich")  # imported by harness's config and console on every path
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TASK = "imdb"


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """Installed distributions reachable from `roots` through their requirements (extras not followed), with the
    versions installed here: name -> version."""
    from importlib.metadata import PackageNotFoundError, distribution

    out: dict[str, str] = {}
    stack = [norm(re.split(r"[<>=!~;\[ (]", r, maxsplit=1)[0]) for r in roots]
    while stack:
        name = stack.pop()
        if name in out:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        out[name] = dist.version
        for req in dist.requires or []:
            if ";" in req and "extra ==" in req.split(";", 1)[1]:
                continue
            stack.append(norm(re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0]))
    return out


def build_wheels(dest: Path, py: str, have: tuple[str, ...]) -> list[Path]:
    """The wheels of what the check needs beyond the image, at the versions tested here, for the host's Python."""
    image = closure(have)
    wanted = {n: v for n, v in closure(NEEDS).items() if n not in image}
    # what harness itself imports is brought even when an image package happens to need it too (here transformers
    # pulls pydantic and rich in through typer; an image's older transformers may not): only torch's own stay behind
    core = closure(("torch", "numpy"))
    wanted.update({n: v for n, v in closure(ALWAYS).items() if n not in core})
    pins = [f"{n}=={v}" for n, v in sorted(wanted.items())]
    dest.mkdir(parents=True, exist_ok=True)
    if pins:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest)]
        got = subprocess.run([*pip, *target_flags(py), *pins], capture_output=True, text=True)
        if got.returncode:
            raise SystemExit(f"downloading {', '.join(pins)} failed:\n{got.stderr[-3000:]}")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if built.returncode:  # the build backend's advice is noise unless the build fails
        raise SystemExit(f"building harness's wheel failed:\n{built.stderr[-3000:]}")
    return sorted(dest.glob("*.whl"))


def build_model(dest: Path, name: str) -> list[Path]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from harness.models.loading import load_pretrained, resolve_model

    resolved = resolve_model(name)
    model = load_pretrained(AutoModel.from_pretrained, resolved, dtype=torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)
    load_pretrained(AutoTokenizer.from_pretrained, resolved).save_pretrained(dest)
    for extra in ("special_tokens_map.json",):  # tokenizer.json holds everything the fast tokenizer needs
        (dest / extra).unlink(missing_ok=True)
    # xz takes the bf16 weights from 45 MB to about 33: the bundle and the checkout then travel in one device call
    # (64 MiB in all); the check unpacks them on the host before it loads the model
    # (harness/commands/gpucheck.py, Bundle)
    weights = dest / "model.safetensors"
    packed = dest / "model.safetensors.xz"
    with open(weights, "rb") as src, lzma.open(packed, "wb", preset=9 | lzma.PRESET_EXTREME) as out:
        shutil.copyfileobj(src, out, 1 << 24)
    weights.unlink()
    return sorted(p for p in dest.iterdir() if p.is_file())


def tracked_mib(repo: Path = ROOT) -> float:
    """The checkout's tracked files (what a device call carries besides the bundle), in MiB."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout
    return (
        sum((repo / name).stat().st_size for name in listed.decode().split("\0") if name and (repo / name).is_file())
        / 2**20
    )


def build_data(dest: Path, model_dir: Path, rows: int | None = None) -> dict:
    """The full profile's IMDB splits, encoded by harness's own classification data module."""
    import numpy as np
    from transformers import AutoTokenizer

    from harness.config import resolve_run_config
    from harness.data.classification import ClassificationDataModule
    from harness.data.sources import load_task_data
    from harness.families.registry import get_task

    task = get_task(TASK)
    sizes = [f"data.{s}_size={rows}" for s in ("train", "validation", "test")] if rows else []
    cfg = resolve_run_config(task, ["profile=full", f"model.name={MODEL}", *sizes])
    data = load_task_data(task, cfg, ("train", "validation", "test"))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dm = ClassificationDataModule(cfg, task, data, tokenizer)
    dm.setup()
    arrays, lineage = {}, {}
    for name, ds in dm.encoded.items():
        values, offsets = ds.sequences["input_ids"]
        if values.max() >= 2**16:
            raise SystemExit(f"token ids of {name} do not fit uint16 (vocabulary too large for this bundle)")
        arrays[f"{name}_ids"] = values.astype(np.uint16)
        arrays[f"{name}_offsets"] = offsets.astype(np.int64)
        arrays[f"{name}_label"] = np.asarray(ds.scalars["label"], dtype=np.int8)
        arrays[f"{name}_row"] = np.asarray(ds.scalars["_row"], dtype=np.int64)
        split = data[name]
        lineage[name] = {
            "rows": len(ds),
            "digest": split.digest(),
            "source_sha256": split.source_sha256,
            "selection": split.selection,
        }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "imdb.npz.xz").write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    d = cfg.data
    settings = {
        "max_length": d.max_length,
        "truncation": d.truncation,
        "head_tokens": d.head_tokens,
        "labels": list(task.labels),
        "pad_token_id": tokenizer.pad_token_id,
    }
    return {"task": TASK, "settings": settings, "splits": lineage, "subset": bool(rows)}


RUN_SH = Path(__file__).resolve().parent / "gpu_run.sh"  # copied into the bundle as run.sh


def size_mib(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default=".gpu-bundle")
    ap.add_argument("--python-version", default="3.12", help="the GPU host's Python (wheels are chosen for it)")
    ap.add_argument("--have", nargs="*", default=list(IMAGE), help="packages the host's image has (left out)")
    ap.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    ap.add_argument("--rows", type=int, help="a subset of each split (stratified), for a quick dry run of the path")
    default_data = os.environ.get("HARNESS_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    ap.add_argument("--data-dir", default=default_data, help="where IMDB's canonical files are (HARNESS_DATA_DIR)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["HARNESS_DATA_DIR"] = args.data_dir
    dest = Path(args.dest)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-bundle-", dir=dest.parent if dest.parent.exists() else None))
    try:
        wheels = build_wheels(tmp / "wheels", args.python_version, tuple(args.have))
        model = build_model(tmp / "model", MODEL)
        data = build_data(tmp / "data", tmp / "model", args.rows)
        parts = {
            "harness wheel": [w for w in wheels if w.name.startswith("harness-")],
            "dependency wheels": [w for w in wheels if not w.name.startswith("harness-")],
            "model (bf16)": model,
            "data (IMDB, tokenized)": sorted((tmp / "data").iterdir()),
        }
        sizes = {k: round(size_mib(v), 2) for k, v in parts.items()}
        manifest = {
            "budget_mib": args.budget_mib,
            "python_version": args.python_version,
            "image": list(args.have),
            "model": {"name": MODEL, "dtype": "bfloat16", "folder": "model"},
            "data": {**data, "file": "data/imdb.npz.xz"},
            "wheels": [w.name for w in wheels],
            "sizes_mib": sizes,
        }
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=1))
        shutil.copyfile(RUN_SH, tmp / "run.sh")
        (tmp / "run.sh").chmod(0o755)
        shutil.copyfile(RUN_SH.with_name("gpu_install.py"), tmp / "install.py")  # run.sh's installer (no pip)
        total = size_mib([p for p in tmp.rglob("*") if p.is_file()])
        for k, v in sizes.items():
            print(f"{v:8.2f} MiB  {k}")
        for w in sorted(parts["dependency wheels"], key=lambda p: -p.stat().st_size):
            print(f"{w.stat().st_size / 2**20:8.2f} MiB    {w.name}")
        print(f"{total:8.2f} MiB  in all (budget {args.budget_mib:g} MiB) -> {dest}")
        checkout = tracked_mib()
        print(
            f"{checkout + total:8.2f} MiB  with the checkout's tracked files ({checkout:.2f} MiB; budget {CARRY_MIB:g})"
        )
        if total > args.budget_mib:
            print(f"error: the bundle is {total - args.budget_mib:.2f} MiB over its budget", file=sys.stderr)
            return 1
        if args.rows is None and checkout + total > CARRY_MIB:  # a dry run's bundle (--rows) is smaller anyway
            print(
                f"error: the bundle and the checkout are {checkout + total - CARRY_MIB:.2f} MiB over the {CARRY_MIB:g} "
                "MiB a device call can carry with margin",
                file=sys.stderr,
            )
            return 1
        if dest.exists():
            shutil.rmtree(dest)
        tmp.chmod(0o755)
        tmp.replace(dest)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
