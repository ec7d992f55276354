#!/usr/bin/env bash
# bench/experiments/handoff_kv.json: evals/bench/experiments/handoff_kv.py on this code ("after") and on d7cb424, the
# last commit whose byte-level rows were forked backend sequences ("before", a git worktree), at the same time, each
# pinned to one of a 2-core machine's cores with one torch thread and nothing else running (about 4 minutes).
# Intermediate JSON goes to runs/handoff_kv/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${BEFORE:-../r2r-before-handoff}
PY=$PWD/.venv/bin/python
mkdir -p runs/handoff_kv
[ -d "$BEFORE" ] || git worktree add --detach "$BEFORE" d7cb424
# the before's packages under the import name r2r, run from outside this tree so that neither this tree nor its
# editable install shadows them (scripts/ab_versions.py's import_root)
SHIM=$("$PY" -c 'import sys; from pathlib import Path; sys.path.insert(0, "scripts"); from ab_versions import import_root
print(import_root(Path(sys.argv[1]).resolve(), Path(sys.argv[2])))' "$BEFORE" "$(mktemp -d)")
(cd "$SHIM" && OMP_NUM_THREADS=1 PYTHONPATH=$SHIM taskset -c 0 "$PY" "$OLDPWD/evals/bench/experiments/handoff_kv.py" \
  --model "$OLDPWD/models/testbed/llm-x" --out "$OLDPWD/runs/handoff_kv/before.json" > "$OLDPWD/runs/handoff_kv/before.log" 2>&1) &
OMP_NUM_THREADS=1 taskset -c 1 "$PY" evals/bench/experiments/handoff_kv.py --out runs/handoff_kv/after.json \
  > runs/handoff_kv/after.log 2>&1
wait
"$PY" - <<'PY'
import json
from pathlib import Path

before, after = (json.loads(Path(f"runs/handoff_kv/{name}.json").read_text()) for name in ("before", "after"))
ratios = {str(b["context_tokens"]): {"ms_per_push": round(b["ms_per_push"] / a["ms_per_push"], 2),
                                     "kv_pool": round(b["kv_pool_gib_max"] / a["kv_pool_gib_max"], 2),
                                     "positions_held": round(b["positions_held_max"] / a["positions_held_max"], 2)}
          for b, a in zip(before["by_length"], after["by_length"])}
meta = {**after["meta"],
        "model": "random weights of models/testbed/llm-x's shape (36 layers, hidden 256, 4 KV heads of 32: 36 KB of KV "
                 "per position in float32) and its tokenizer",
        "before": "d7cb424 (rows as forked backend sequences), run from a git worktree",
        "after": "this code (one trunk per state, rows as branches of one pass)",
        "run": "before and after at the same time, each pinned to one of the 2 cores (taskset) with one torch thread",
        "before_over_after": ratios}
result = {"before": before["by_length"], "after": after["by_length"], "meta": meta}
Path("bench/experiments/handoff_kv.json").write_text(json.dumps(result, indent=2) + "\n")
PY
