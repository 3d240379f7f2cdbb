"""Download the wheels harness needs for an offline host with another Python / platform (`make wheels`).

    python scripts/wheels.py --python-version 3.12 --dest .wheels312 [--have torch lightning ...] [--dry-run]

1. Resolve harness's dependencies (pyproject.toml, plus the dev extra) for the target interpreter and platform with
   pip's resolver (`pip install --dry-run --report`, metadata only, nothing installed).
2. Leave out what the target already has (`--have`, e.g. the torch / lightning / transformers of a GPU image) and
   every package that only those need (CUDA libraries, triton, sympy, ...).
3. Download the rest as binary wheels (`pip download --no-deps --only-binary=:all:`), plus harness's own wheel, and
   print the bundle's size per package, largest first.

On the offline host: `make setup-offline WHEELS=<folder>` installs from the folder with `--no-index`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "linux_x86_64")
ROOT = Path(__file__).resolve().parents[1]
# pure-Python dependencies published only as source: built into wheels here (`pip wheel`), their own
# dependencies resolved as binaries like everything else
SOURCE_ONLY = {"rouge-score": ["absl-py", "nltk", "numpy", "six"]}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extras: list[str]) -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for e in extras:
        reqs += project.get("optional-dependencies", {}).get(e, [])
    return reqs


def target_flags(py: str) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", py, "--implementation", "cp"]
    for p in PLATFORMS:
        flags += ["--platform", p]
    return flags


def resolve(reqs: list[str], py: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--target",
            str(Path(tmp) / "t"),
            *target_flags(py),
            *reqs,
        ]
        subprocess.run(cmd, check=True)
        return json.loads(report.read_text())["install"]


def keep_closure(items: list[dict], roots: list[str], have: set[str]) -> list[dict]:
    """Packages reachable from `roots` without passing through one the target already has."""
    by_name = {norm(i["metadata"]["name"]): i for i in items}
    seen: set[str] = set()
    stack = [norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in roots]
    while stack:
        n = stack.pop()
        if n in seen or n in have or n not in by_name:
            continue
        seen.add(n)
        for dep in by_name[n]["metadata"].get("requires_dist") or []:
            if ";" in dep and "extra ==" in dep.split(";", 1)[1]:
                continue  # optional extras are not installed
            stack.append(norm(re.split(r"[<>=!~;\[ (]", dep, maxsplit=1)[0]))
    return [by_name[n] for n in sorted(seen)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--dest", default=None)
    ap.add_argument("--have", nargs="*", default=[], help="packages the target host already has (left out)")
    ap.add_argument("--extras", nargs="*", default=["dev"])
    ap.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        help="dependencies not to bring at all (e.g. large model packages the host does not need)",
    )
    ap.add_argument("--dry-run", action="store_true", help="resolve and list, download nothing")
    args = ap.parse_args()
    dest = Path(args.dest or f".wheels{args.python_version.replace('.', '')}")
    have = {norm(h) for h in args.have}
    reqs = [
        r
        for r in requirements(args.extras)
        if norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) not in {norm(e) for e in args.exclude}
    ]
    source = [r for r in reqs if norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) in SOURCE_ONLY]
    reqs = [r for r in reqs if r not in source]
    for r in source:
        reqs += SOURCE_ONLY[norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0])]
    items = resolve(reqs, args.python_version)
    kept = keep_closure(items, reqs, have)
    left_out = sorted({norm(i["metadata"]["name"]) for i in items} - {norm(i["metadata"]["name"]) for i in kept})
    print(
        f"{len(kept)} package(s) to bring for Python {args.python_version}; left out (the host has them, or only "
        f"they need them): {', '.join(left_out) or 'none'}"
    )
    pins = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in kept]
    if args.dry_run:
        print("\n".join(pins + [f"{r} (built from source)" for r in source]))
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "-d",
            str(dest),
            *target_flags(args.python_version),
            *pins,
        ],
        check=True,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(ROOT), *source], check=True
    )
    sizes = sorted(((p.stat().st_size, p.name) for p in dest.glob("*.whl")), reverse=True)
    total = sum(s for s, _ in sizes)
    for s, n in sizes[:15]:
        print(f"{s / 2**20:8.1f} MiB  {n}")
    print(f"{total / 2**20:8.1f} MiB  in all, {len(sizes)} wheels in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
