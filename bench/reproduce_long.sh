#!/usr/bin/env bash
# bench/long.json and bench/long.png: `r2r bench long` on this code ("after") and on 457437f, the last commit before
# issue 37's changes ("before", a git worktree), at the same time, each pinned to one of a 2-core machine's cores
# with one torch thread and nothing else running (about 85 minutes; the before's batch 1 and batch 8 run as two
# processes, one after the other on its core). Intermediate JSON goes to runs/long/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${BEFORE:-../r2r-before}
PY=$PWD/.venv/bin/python
mkdir -p runs/long
[ -d "$BEFORE" ] || git worktree add --detach "$BEFORE" 457437f
before() {  # the old layout imported its packages top level: run it from its own tree
  (cd "$BEFORE" && for b in 1 8; do
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD taskset -c 0 "$PY" -m r2r bench long --batch-sizes $b \
      --out "$OLDPWD/runs/long/before_b$b.json" --no-plot
  done)
}
before > runs/long/before.log 2>&1 &
OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/r2r bench long --out runs/long/after.json --no-plot > runs/long/after.log 2>&1
wait
"$PY" - <<'PY'
import json
from pathlib import Path

from r2r.evals.bench.long import plot_long

after = json.loads(Path("runs/long/after.json").read_text())
before: dict = {}
for b in (1, 8):
    path = Path(f"runs/long/before_b{b}.json")
    if not path.exists():  # a run stopped before its end writes nothing
        print(f"{path} missing: bench/long.json has no before at batch {b}")
        continue
    run = json.loads(path.read_text())
    before[f"batch_{b}"] = run[f"batch_{b}"]
    before["meta"] = {**run["meta"], "code": "457437f (before issue 37's changes)"}
after["before"] = before
after["meta"]["run"] = ("after (this code) and before (a worktree of 457437f, batch 1 then batch 8) at the same time, "
                        "each pinned to one of the 2 cores (taskset) with one torch thread, nothing else running")
Path("bench/long.json").write_text(json.dumps(after, indent=2) + "\n")
plot_long(after, Path("bench/long.png"))
PY
