"""The GPU check's `run.sh` on the hosts people have: `python3` a system interpreter, `python3` itself a virtualenv
(the GPU image's layout, where a venv made from it with --system-site-packages would not see its torch), and VENV
given. A stand-in bundle carries a one-module `harness` wheel whose `gpucheck` reports which interpreter ran it,
where `harness` came from, and whether the image's packages were in sight; a stand-in `torch` package marks them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))

GPUCHECK = """
import importlib.util, json, sys
import psutil, torch
print("@@" + json.dumps({
    "executable": sys.executable,
    "venv": sys.prefix != sys.base_prefix,
    "harness": __file__,
    "image_torch": getattr(torch, "IMAGE", False),
    "image_psutil": getattr(psutil, "IMAGE", False),
    "argv": sys.argv[1:],
}))
"""


def _wheel(folder: Path) -> Path:
    files = {
        "harness/__init__.py": "",
        "harness/commands/gpucheck.py": GPUCHECK,
        "harness-0.0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: harness\nVersion: 0.0.1\n",
        "harness-0.0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("harness-0.0.1.dist-info/RECORD,,")
    files["harness-0.0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / "harness-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def _dist_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel of `name` holding `files`."""
    info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/RECORD": "",
    }
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


def _fake_torch(site: Path) -> None:
    (site / "torch").mkdir(parents=True, exist_ok=True)
    (site / "torch" / "__init__.py").write_text("IMAGE = True\n")
    # the image's own psutil (an installed distribution, as the image's pip would leave it)
    (site / "psutil").mkdir(exist_ok=True)
    (site / "psutil" / "__init__.py").write_text("IMAGE = True\n")
    (site / "psutil-5.9.0.dist-info").mkdir(exist_ok=True)
    (site / "psutil-5.9.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: psutil\nVersion: 5.9.0\n")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    work = tmp_path_factory.mktemp("runsh")
    bundle = work / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    _wheel(bundle / "wheels")
    shutil.copyfile(ROOT / "scripts" / "gpu_run.sh", bundle / "run.sh")
    shutil.copyfile(ROOT / "scripts" / "gpu_install.py", bundle / "install.py")
    # a package the image has (its own psutil) and the bundle carries too: the image's must stay the one that loads
    _dist_wheel(bundle / "wheels", "psutil", "9.9.9", {"psutil/__init__.py": "BUNDLE = True\n"})
    # the GPU image: its python3 is a virtualenv whose site-packages hold torch
    image = work / "image"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(image)], check=True, capture_output=True)
    site = next((image / "lib").glob("python3*/site-packages"))
    _fake_torch(site)
    # a system interpreter whose own packages hold torch (its site, stood in for by a folder on PYTHONPATH)
    system_site = work / "system-site"
    _fake_torch(system_site)
    return {"work": work, "bundle": bundle, "image": image, "system_site": system_site}


def _run(hosts, env_extra: dict, path_first: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHONPATH", "VIRTUAL_ENV", "PYTHON")}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["PATH"] = os.pathsep.join([str(path_first)] if path_first else []) + os.pathsep + env["PATH"]
    env.update(env_extra)
    return subprocess.run(
        ["sh", str(hosts["bundle"] / "run.sh"), "--device", "cpu"],
        cwd=hosts["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _report(done: subprocess.CompletedProcess) -> dict:
    line = next((x for x in done.stdout.splitlines() if x.startswith("@@")), None)
    assert done.returncode == 0 and line, done.stdout + done.stderr
    return json.loads(line[2:])


def test_python3_itself_a_virtualenv_sees_the_images_torch(hosts):
    got = _report(_run(hosts, {}, path_first=hosts["image"] / "bin"))
    assert got["venv"] and Path(got["executable"]).parent == hosts["image"] / "bin"
    assert got["image_torch"] and got["harness"].startswith(str(hosts["bundle"] / "site"))
    assert got["image_psutil"]  # the bundle's copy never shadows the image's own
    assert got["argv"] == ["--bundle", str(hosts["bundle"]), "--device", "cpu"]


def test_a_system_interpreter(hosts):
    got = _report(_run(hosts, {"PYTHON": str(SYSTEM_PYTHON), "PYTHONPATH": str(hosts["system_site"])}))
    assert not got["venv"] and got["image_torch"] and got["image_psutil"]
    assert got["harness"].startswith(str(hosts["bundle"] / "site"))


def test_venv_given_installs_into_it(hosts):
    got = _report(_run(hosts, {"VENV": str(hosts["image"])}))
    assert got["venv"] and got["image_torch"] and got["image_psutil"]
    assert got["harness"].startswith(str(hosts["image"] / "lib"))


def test_an_interpreter_without_torch_is_one_line(hosts):
    done = _run(hosts, {"PYTHON": str(SYSTEM_PYTHON)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"run.sh: {SYSTEM_PYTHON} cannot import torch: set PYTHON=<the interpreter that has it> or "
        "VENV=<its virtualenv>"
    )


def test_a_virtualenv_without_pip_installs_the_bundle(hosts):
    """`python3 -m venv --without-pip` images have no pip: run.sh unpacks the wheels itself."""
    bare = hosts["work"] / "bare"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(bare)], check=True, capture_output=True)
    _fake_torch(next((bare / "lib").glob("python3*/site-packages")))
    got = _report(_run(hosts, {"VENV": str(bare)}))
    assert got["venv"] and got["image_torch"] and got["image_psutil"]
    assert got["harness"].startswith(str(bare / "lib"))
    assert not (bare / "bin" / "pip").exists()
