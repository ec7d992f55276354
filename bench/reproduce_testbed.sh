#!/usr/bin/env bash
# Rebuild every committed testbed number after the two models are trained
# (r2r testbed data; r2r testbed train --size slm; r2r testbed train --size llm;
#  r2r testbed train --size llm --init-from models/testbed/llm --tokenizer-dir models/testbed/tokenizer-x
#      --out models/testbed/llm-x --steps 500 --lr 1e-3 --warmup 50 --ckpt-dir runs/testbed/ckpt-llm-x).
# Labels and runs go to data/ and runs/ (not committed); cards and bench JSON are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
R2R=${R2R:-.venv/bin/r2r}
$R2R testbed eval --n 500
for family in math code; do
  $R2R label --prompts "testbed-$family:800" --verifier answer --batch-size 64 --out "data/labels/testbed-$family"
done
$R2R train-router --labels data/labels/testbed-math data/labels/testbed-code --out models/testbed/router
# each family's learned-router budget: the largest whose routed LLM share on validation stays within 20%
for family in code math; do
  $R2R bench router-budget --family $family --budgets 0.15,0.16,0.17,0.18,0.19,0.20,0.21,0.22,0.23,0.24,0.25,0.26,0.27,0.28,0.29,0.30 \
    --out bench/router_budget_$family.json
done
chosen() { python3 -c "import json; print(json.load(open('bench/router_budget_$1.json'))['chosen'])"; }
$R2R bench router --labels data/labels/testbed-math data/labels/testbed-code \
  --share "math=$(chosen math),code=$(chosen code)" --out bench/router_testbed.json
$R2R bench decode --out bench/decode.json
$R2R bench speculative --out bench/speculative.json
for family in math code; do
  rm -rf "runs/eval/testbed-$family"  # a run resumes only with the same models and router
  $R2R eval "testbed-$family" --limit 200 --batch-size 25 --out "runs/eval/testbed-$family"
  mkdir -p "bench/eval/testbed-$family"
  cp runs/eval/testbed-$family/report.json runs/eval/testbed-$family/*.png "bench/eval/testbed-$family/"
done
$R2R bench serve --out bench/serve.json
# the cross pair's router: labels made with SLM + llm-x (through the byte-level handoff)
for family in math code; do
  $R2R label --slm models/testbed/slm --llm models/testbed/llm-x --prompts "testbed-$family:800" --verifier answer \
    --batch-size 64 --out "data/labels/testbed-x-$family"
done
$R2R train-router --slm models/testbed/slm --llm models/testbed/llm-x \
  --labels data/labels/testbed-x-math data/labels/testbed-x-code --out models/testbed/router-x
$R2R bench cross-tokenizer --n 500 --router-x models/testbed/router-x --out bench/cross_tokenizer.json
$R2R models fetch smol-gemma
$R2R bench handoff --pair smol-gemma --n 8 --max-tokens 48 --out bench/handoff_smol_gemma.json
${PYTHON:-.venv/bin/python} bench/experiments/takeover_recovery.py 150 > bench/experiments/takeover_recovery.json  # why code loses with llm-x
${PYTHON:-.venv/bin/python} bench/experiments/router_vs_confidence.py > bench/experiments/router_vs_confidence.json  # router vs confidence on its labels
# on-policy router: labels whose SLM branches are continued by routed decoding with the testbed router at 15%
for family in math code; do
  $R2R label --prompts "testbed-$family:800" --verifier answer --batch-size 64 --continue-with routed \
    --continue-share 0.15 --out "data/labels/testbed-op-$family"
done
$R2R train-router --labels data/labels/testbed-op-math data/labels/testbed-op-code --out models/testbed/router-onpolicy
for family in code math; do
  $R2R bench router-budget --router models/testbed/router-onpolicy --family $family \
    --budgets 0.15,0.16,0.17,0.18,0.19,0.20,0.21,0.22,0.23,0.24,0.25,0.26,0.27,0.28,0.29,0.30 \
    --out runs/router_onpolicy_budget_$family.json
done
chosen_op() { python3 -c "import json; print(json.load(open('runs/router_onpolicy_budget_$1.json'))['chosen'])"; }
$R2R bench router --router models/testbed/router-onpolicy --labels data/labels/testbed-math data/labels/testbed-code \
  --share "math=$(chosen_op math),code=$(chosen_op code)" --out bench/router_onpolicy_testbed.json
# both routers at a 10% budget, where the policies separate (copies: bench router rewrites a router's card)
rm -rf runs/router-default runs/router-onpolicy
cp -r models/testbed/router runs/router-default && cp -r models/testbed/router-onpolicy runs/router-onpolicy
for name in onpolicy default; do
  $R2R bench router --router runs/router-$name --labels data/labels/testbed-math data/labels/testbed-code \
    --share math=0.1,code=0.1 --out runs/router_low_$name.json
done
python3 -c "import json; print(json.dumps({n: json.load(open(f'runs/router_low_{n}.json')) for n in ('onpolicy', 'default')}, indent=2))" \
  > bench/router_low_share.json
for family in math code; do
  rm -rf "runs/eval/testbed-$family-onpolicy"
  $R2R eval "testbed-$family" --router models/testbed/router-onpolicy --policies learned --limit 200 --batch-size 25 \
    --out "runs/eval/testbed-$family-onpolicy"
  mkdir -p "bench/eval/testbed-$family-onpolicy"
  cp "runs/eval/testbed-$family-onpolicy/report.json" "bench/eval/testbed-$family-onpolicy/"
done
# an operating point chosen on validation only: the smallest budget whose validation accuracy is within 1 point
# of the accuracy at the <=20%-share budget chosen above; both routers there on the test split
for family in code math; do
  $R2R bench router-budget --router models/testbed/router-onpolicy --family $family \
    --budgets 0.05,0.06,0.07,0.08,0.09,0.10,0.11,0.12,0.13,0.14,0.15 --out runs/router_onpolicy_low_budget_$family.json
done
rule=$(python3 - <<'PY'
import json
picked = {}
for f in ("math", "code"):
    top = json.load(open(f"runs/router_onpolicy_budget_{f}.json"))
    plateau = top["budgets"][f"{top['chosen']:.2f}"]["accuracy"]
    low = json.load(open(f"runs/router_onpolicy_low_budget_{f}.json"))["budgets"]
    picked[f] = min(float(b) for b, r in low.items() if r["accuracy"] >= plateau - 0.01)
print(",".join(f"{f}={b}" for f, b in picked.items()))
PY
)
for name in onpolicy default; do
  $R2R bench router --router runs/router-$name --labels data/labels/testbed-math data/labels/testbed-code \
    --share "$rule" --out runs/router_rule_$name.json
done
python3 -c "import json; print(json.dumps({'chosen': '$rule', 'validation': {f: json.load(open(f'runs/router_onpolicy_low_budget_{f}.json')) for f in ('math', 'code')}, **{n: json.load(open(f'runs/router_rule_{n}.json')) for n in ('onpolicy', 'default')}}, indent=2))" \
  > bench/router_operating_point.json
