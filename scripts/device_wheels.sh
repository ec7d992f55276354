#!/usr/bin/env bash
# Wheels the GPU check needs that the device machine lacks (it has no network), and whether what the device tool
# sends fits. The device has torch, transformers 5.17, tokenizers, safetensors, numpy, scikit-learn, rich, httpx
# and pytest, which is all the check imports (the project supports transformers >= 5.17; the headline bench runs
# with --no-plot: no matplotlib there), so today no wheel travels. A wheel added to WHEELS travels in .whl/
# (pass `.whl` in the tool's carry; scripts/gpu_check.sh unpacks it into a temporary target).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
WHEELS=()
rm -rf .whl && mkdir -p .whl
if [ ${#WHEELS[@]} -gt 0 ]; then
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl \
    "${WHEELS[@]}"
fi
shopt -s nullglob
wheels=(.whl/*.whl)
total=$(du -cb /dev/null "${wheels[@]}" | tail -1 | cut -f1)
ls -1 .whl
# the device tool sends the working tree (tracked and untracked-not-ignored files) and the carried wheels: 64 MiB in all
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "wheels: ${#WHEELS[@]} ($((total / 1048576)) MiB in .whl/); working tree: $((tree / 1048576)) MiB;" \
  "together $(((tree + total) / 1048576)) MiB of the device tool's 64 MiB"
if [ $((tree + total)) -gt $((64 * 1048576)) ]; then
  echo "too large to send: $(((tree + total) / 1048576)) MiB (the committed model weights are most of it)" >&2
  exit 1
fi
