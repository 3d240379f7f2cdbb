#!/bin/sh
# The GPU check on a bare, offline host (the bundle's run.sh):
#   sh run.sh [--device cuda|cpu] [--out DIR] [--phases kernels,bench-train,imdb,...] [overrides ...]
#
# Puts the bundle's wheels where the host's Python sees them beside the image's own packages (torch with CUDA), with
# install.py (no pip: a wheel is a zip; a package the image already has is left out, so none of the bundle's copies
# shadows it), then runs python -m harness.commands.gpucheck on this bundle:
# - VENV=<a virtualenv>: installed into that environment (e.g. the image's own venv, or make gpu-check's);
# - otherwise: installed into <bundle>/site, which goes first on PYTHONPATH for ${PYTHON:-python3}, whether that is
#   the system's interpreter or itself a virtualenv (many GPU images: a venv made from it with
#   --system-site-packages would link the base interpreter's packages, not the image venv's torch). Nothing of the
#   image is changed.
set -e
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${VENV:-}" ]; then
  py="$VENV/bin/python"
  if [ ! -x "$py" ]; then
    echo "run.sh: VENV=$VENV holds no bin/python; name a virtualenv, or unset VENV to use ${PYTHON:-python3}" >&2
    exit 2
  fi
  # the wheels unpacked into it without pip (install.py): what the image has is kept, harness is the bundle's
  "$py" "$here/install.py" --into-env
else
  py=$(command -v "${PYTHON:-python3}") || {
    echo "run.sh: no ${PYTHON:-python3} on PATH; set PYTHON=<the image's interpreter> or VENV=<its virtualenv>" >&2
    exit 2
  }
  site="$here/site"
  # only what the image lacks goes to site/ (install.py, no pip needed), so nothing on it shadows the image's own
  "$py" "$here/install.py" --target "$site"
  PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONPATH
fi
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "run.sh: $py cannot import torch: set PYTHON=<the interpreter that has it> or VENV=<its virtualenv>" >&2
  exit 2
fi
"$py" -c 'import sys; v = sys.prefix != sys.base_prefix; print("run.sh: python", sys.executable, "(a virtualenv)" if v else "(a system interpreter)")'
exec "$py" -m harness.commands.gpucheck --bundle "$here" "$@"
