#!/usr/bin/env bash
# The GPU check in one command, on any CUDA machine: `bash scripts/gpu_check.sh`.
# --device cpu --quick runs the same code paths on tiny shapes (what `make test` does so that it cannot rot).
# Python: $PY if set, else the repository's .venv, else python3 on the PATH (the one that must hold torch).
# Results: ${OUT:-runs/gpu}/gpu_check.json. Wheels a machine without network access lacks go in .whl/
# (scripts/device_wheels.sh) and are unpacked into a temporary target, never into the machine's own Python.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-}
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  target=$(mktemp -d)  # pure-Python wheels: unpacking one is installing it (no pip needed on the device)
  for wheel in .whl/*.whl; do "$PY" -m zipfile -e "$wheel" "$target"; done
  export PYTHONPATH="$target:$PYTHONPATH"
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L
exec "$PY" scripts/gpu_check.py "$@"
