"""The GPU check bundle's installer (copied into the bundle as `install.py`; run.sh runs it): the bundle's wheels
unpacked for the interpreter that runs it, without pip and without shadowing anything the image has.

    python install.py --target DIR     # into DIR (run.sh puts it first on PYTHONPATH)
    python install.py --into-env       # into this interpreter's own site-packages (VENV=...)

A wheel is a zip file: unpacking it where the interpreter imports from is an install (no scripts or compiled steps
are needed by these). A virtualenv made without pip (`python -m venv --without-pip`) runs this as well as any. A
package the interpreter can already import is left out, so the image's own copy (its accelerate, its psutil, built
for its torch) is the one that loads; harness itself is always the bundle's, replacing an older build. Standard
library only: this runs before anything of the bundle is importable.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def dist_name(wheel: Path) -> str:
    """The distribution a wheel installs, normalised (`pydantic_core-2.50.5-cp312-...whl` -> `pydantic-core`)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def installed(name: str) -> str | None:
    """The version of `name` this interpreter already has, or None."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def remove_old(target: Path, name: str) -> None:
    """An earlier install of `name` in `target` (its packages and its .dist-info), gone before the new one lands."""
    norm = name.replace("-", "_")
    for info in target.glob("*.dist-info"):
        if re.sub(r"[-_.]+", "_", info.name.split("-")[0]).lower() != norm:
            continue
        top = info / "top_level.txt"
        names = top.read_text().split() if top.is_file() else [norm]
        for pkg in names:
            shutil.rmtree(target / pkg, ignore_errors=True)
        shutil.rmtree(info, ignore_errors=True)
    shutil.rmtree(target / norm, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", type=Path, help="a folder for the bundle's packages (emptied first)")
    where.add_argument("--into-env", action="store_true", help="this interpreter's own site-packages")
    ap.add_argument("--wheels", type=Path, default=HERE / "wheels")
    args = ap.parse_args(argv)
    if args.target is not None:
        target = args.target.resolve()
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
    else:
        target = Path(sysconfig.get_paths()["purelib"])
    kept, unpacked = [], []
    for wheel in sorted(args.wheels.glob("*.whl")):
        name = dist_name(wheel)
        have = installed(name)
        if name != "harness" and have is not None:
            kept.append(f"{name} {have}")
            continue
        remove_old(target, name)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
        unpacked.append(name)
    print(f"install.py: {len(unpacked)} package(s) into {target} ({', '.join(unpacked)})", flush=True)
    if kept:
        print(f"install.py: the image's own kept: {', '.join(kept)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
