"""Two checkouts of r2r on the embedded pair, interleaved in one run: same outputs, tokens/s side by side.

    .venv/bin/python scripts/ab_versions.py BEFORE_DIR AFTER_DIR --out bench/ab.json [--rounds 3] [--n 16]
        [--pair testbed-x]

Each round runs every (version, mode, batch) cell once, in a fresh process per version (through the public API
both versions share: `r2r.load_pair(pair).generate`), the versions' order alternating between rounds so that neither always runs on a warmer or a quieter machine. Prompts are held-out
math and code problems, written once by this checkout. The JSON has each cell's tokens/s per round and median,
after/before ratios, and whether every cell's token ids are the same in both versions.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# what one version's process runs: decode every prompt in each (mode, batch) cell, report tokens/s and a digest
WORKER = r"""
import hashlib, json, sys, time
import r2r
prompts, cells, name = json.load(open(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
pair = r2r.load_pair(name)
pair.generate(prompts[:2], max_tokens=16)  # warm-up
out = {}
for mode, batch in cells:
    start, tokens, ids = time.perf_counter(), 0, []
    for i in range(0, len(prompts), batch):
        for g in pair.generate(prompts[i:i + batch], mode=mode, max_tokens=96):
            tokens += len(g.token_ids)
            ids.append(list(g.token_ids))
    out[f"{mode}_batch_{batch}"] = {"tokens_per_s": tokens / (time.perf_counter() - start),
                                    "tokens": tokens, "digest": hashlib.sha256(repr(ids).encode()).hexdigest()[:16]}
print(json.dumps(out))
"""


def held_out_prompts(n: int) -> list[str]:
    from r2r.testbed.splits import heldout

    return [p.prompt for family in ("math", "code") for p in heldout(family, "test", n // 2)]


def import_root(checkout: Path, tmp: Path) -> Path:
    """The folder to put first on PYTHONPATH (and run in) so that `import r2r` is the checkout's. A checkout of the
    one-import-name layout (r2r/ beside serving/, router/, ...: pyproject's package-dir) gets a folder whose r2r/
    links r2r/'s files and the other folders as its subpackages; outside the checkout, so neither its top-level
    folders nor the editable install of this one shadow them. Older checkouts import from their root."""
    if not (checkout / "serving").is_dir() or not (checkout / "r2r" / "__init__.py").exists():
        return checkout
    root = tmp / f"import-{checkout.name}"
    (root / "r2r").mkdir(parents=True, exist_ok=True)
    for item in (checkout / "r2r").iterdir():
        link = root / "r2r" / item.name
        if not link.exists():
            link.symlink_to(item)
    for folder in ("router", "serving", "testbed", "data_gen", "evals", "models"):
        link = root / "r2r" / folder
        if not link.exists():
            link.symlink_to(checkout / folder)
    return root


def run_version(checkout: Path, prompts: Path, cells: list[tuple[str, int]], pair: str) -> dict:
    root = import_root(checkout, prompts.parent)
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(prompts), json.dumps(cells), pair], cwd=root, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{checkout}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=16, help="held-out prompts, half math, half code")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--pair", default="testbed", help="the embedded pair to run (testbed-x: the cross-tokenizer "
                        "pair)")
    args = parser.parse_args()
    cells = [(mode, int(b)) for mode in ("speculative", "sequential") for b in args.batch_sizes.split(",")]
    versions = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in versions}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.json"
        prompts.write_text(json.dumps(held_out_prompts(args.n)))
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                runs[name].append(run_version(versions[name], prompts, cells, args.pair))
                print(f"round {r + 1}/{args.rounds} {name}: " + ", ".join(
                    f"{k} {v['tokens_per_s']:.1f} tok/s" for k, v in runs[name][-1].items()), file=sys.stderr)
    result: dict = {"cells": {}}
    for key in runs["before"][0]:
        cell = {name: {"tokens_per_s": [round(run[key]["tokens_per_s"], 1) for run in runs[name]],
                       "median": round(statistics.median(run[key]["tokens_per_s"] for run in runs[name]), 1)}
                for name in versions}
        cell["after_over_before"] = round(cell["after"]["median"] / cell["before"]["median"], 3)
        cell["same_tokens"] = len({run[key]["digest"] for name in versions for run in runs[name]}) == 1
        result["cells"][key] = cell
    result["meta"] = {"before": str(versions["before"]), "after": str(versions["after"]), "rounds": args.rounds,
                      "pair": args.pair, "prompts": args.n, "max_tokens": 96,
                      "policy": "the pair's default (learned router)",
                      "order": "alternating per round",
                      "same_tokens": "every round's token ids of the cell, in both versions, hash the same"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["cells"], indent=1))


if __name__ == "__main__":
    main()
