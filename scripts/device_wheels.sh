#!/usr/bin/env bash
# Wheels the GPU check needs that the device machine lacks (it has no network): the project pins
# transformers >= 5.24 and the device has 5.17, so transformers 5.24.0 travels with the huggingface-hub it needs.
# Everything else the check imports is on the device (torch, tokenizers, safetensors, numpy, scikit-learn, rich,
# httpx, pytest); the headline bench runs with --no-plot (no matplotlib there). Pass `.whl` in the tool's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
rm -rf .whl && mkdir -p .whl
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl \
  transformers==5.24.0 huggingface-hub==2.4.0
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
ls -1 .whl
# the device tool sends the working tree (tracked and untracked-not-ignored files) and the carried wheels: 64 MiB in all
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "wheels: $((total / 1048576)) MiB in .whl/; working tree: $((tree / 1048576)) MiB; the device tool sends at most 64 MiB"
if [ $((tree + total)) -gt $((64 * 1048576)) ]; then
  echo "too large to send: $(((tree + total) / 1048576)) MiB (the committed model weights are most of it)" >&2
  exit 1
fi
