"""`make gpu-sim`: the GPU check's bare host, simulated here on the CPU.

    python scripts/gpu_sim.py [--rows 96] [--keep]

1. An "image" venv with only what the GPU host's image has (torch, lightning, transformers, torchmetrics, sacrebleu,
   numpy; CPU builds, this machine's Python), reused while its package list is unchanged (`.gpu-sim/image`);
2. a bundle built by `scripts/gpu_bundle.py` for this Python, with `--rows` reviews per split (the same code path as
   the full bundle, a small subset);
3. the bundle's `run.sh` with that venv's `python3` first on PATH and no VENV given (the GPU image's own layout: its
   interpreter is itself a virtualenv): the wheels installed with `--no-index --no-deps` into the bundle's `site/`,
   then the check on the CPU with the GPU's settings (bf16-mixed, fused AdamW with clipping, loader workers);
4. the offline records sent to a fresh sqlite MLflow store with `harness sync` (this checkout's venv), and the
   runs read back.

Exits non-zero if any step fails; prints what each step took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the GPU host's image (the GPU notes); torch is this machine's CPU build of the nearest release
IMAGE = ("torch==2.13.0", "lightning==2.6.6", "transformers==5.17.0", "torchmetrics==1.9.0", "sacrebleu", "numpy")
HAVE = ("torch", "lightning", "pytorch-lightning", "transformers", "torchmetrics", "sacrebleu", "numpy")


def step(name: str, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
    t = time.perf_counter()
    print(f"-- {name}", flush=True)
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    out = done.stdout + done.stderr
    if done.returncode:
        print(out[-6000:])
        raise SystemExit(f"gpu-sim: '{name}' failed (exit {done.returncode})")
    print(f"   {time.perf_counter() - t:.0f} s", flush=True)
    return done.stdout


def image_venv(folder: Path) -> Path:
    marker = folder / "image.json"
    want = {"python": platform.python_version(), "packages": list(IMAGE)}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    step("image venv", [sys.executable, "-m", "venv", str(folder)])
    step("image packages", [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", *IMAGE])
    marker.write_text(json.dumps(want))
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / ".gpu-sim"))
    ap.add_argument("--rows", type=int, default=96, help="reviews per split in the simulated bundle")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    image = image_venv(work / "image")
    bundle, out = work / "bundle", work / "out"
    shutil.rmtree(out, ignore_errors=True)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(
        step(
            "bundle",
            [
                sys.executable,
                str(ROOT / "scripts" / "gpu_bundle.py"),
                "--dest",
                str(bundle),
                "--python-version",
                py,
                "--rows",
                str(args.rows),
                "--have",
                *HAVE,
            ],
        )
    )
    # the bare host as the GPU image is: `python3` on PATH is itself a virtualenv holding torch (no VENV given), no
    # network index, the bundle's own run script
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "HARNESS_", "MLFLOW_", "VIRTUAL_ENV"))}
    env.pop("VENV", None)
    env.pop("PYTHONPATH", None)
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_CONFIG_FILE=os.devnull, HF_HUB_OFFLINE="1")
    env["PATH"] = f"{image / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    print(
        step(
            "gpu-check (bare image + bundle, CPU)",
            # rows cut to 128 tokens and a few measured steps: the whole path in minutes on two cores, compile included
            ["sh", str(bundle / "run.sh"), "--device", "cpu", "--out", str(out), "--max-length", "128"]
            + ["--kernels", "auto,eager,compile", "trainer.max_epochs=1"],
            env=env,
            cwd=work,
        )
    )
    probe = (
        "import sys, harness.commands.gpucheck; "
        "print(sorted(m for m in ('mlflow', 'optuna', 'datasets', 'evaluate', 'pandas') if m in sys.modules))"
    )
    site = {**env, "PYTHONPATH": str(bundle / "site")}  # where run.sh put the bundle's wheels
    print(
        "   imported beyond the image:",
        step("import check", [str(image / "bin" / "python"), "-c", probe], env=site).strip(),
    )
    store = work / "mlruns.db"
    store.unlink(missing_ok=True)
    uri = f"sqlite:///{store}"
    harness = str(ROOT / ".venv" / "bin" / "harness")
    for record in sorted((out / "runs").iterdir()):
        step(f"harness sync {record.name}", [harness, "sync", str(record), "--tracking-uri", uri])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("imdb")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    for r in runs:
        m = r.data.metrics
        print(
            f"   synced run {r.info.run_id[:8]} {r.info.run_name} {r.info.status}: accuracy {m['test_accuracy']:.4f} "
            f"[{m['test_accuracy_ci_low']:.4f}, {m['test_accuracy_ci_high']:.4f}] on {m['test_examples']:.0f}"
        )
    if len(runs) != 3 or any(r.info.status != "FINISHED" for r in runs):  # imdb, no bucketing, batch 128
        raise SystemExit(f"gpu-sim: expected 3 finished runs in {uri}, found {len(runs)}")
    exp = client.get_experiment_by_name("bench-train")
    bench = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])} if exp else {}
    if sorted(bench) != ["gpu-check-bench-train", "gpu-check-kernels", "gpu-check-steps"]:
        raise SystemExit(f"gpu-sim: expected the kernels, bench-train and steps runs in {uri}, found {sorted(bench)}")
    m = bench["gpu-check-bench-train"].data.metrics
    kept = bench["gpu-check-kernels"].data.tags["harness.gpu_check.kept"]
    print(
        f"   synced bench-train: harness/Trainer {m['small-b4_ratio_samples_per_sec']:.2f}x (small), "
        f"{m['bert-base-b4_ratio_samples_per_sec']:.2f}x (bert-base), harness/plain loop "
        f"{m['bert-base-b4_ratio_plain_samples_per_sec']:.2f}x; kernels kept: {kept}"
    )
    s = bench["gpu-check-steps"].data.metrics
    print(
        f"   synced steps: harness {s['steps_harness_aten_ops_per_step']:.0f} aten ops/step "
        f"({s['steps_ops_vs_trainer']:.2f}x the Trainer's), {s['steps_host_vs_plain']:.2f}x the plain loop's time"
    )
    print(f"gpu-sim: the bare-host path works ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
