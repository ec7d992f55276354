"""Is the learned router a better classifier of its own labels than SLM confidence? (README, evaluation sweeps.)

On the router's validation prompts (the split `r2r train-router` held out), per label directory:
ROC-AUC, PR-AUC and recall of divergent tokens at 2/5/10% routing rates for the router's score and
for 1 - the SLM's top-1 probability (what confidence routing thresholds).

    .venv/bin/python -m r2r.evals.bench.experiments.router_vs_confidence [--router DIR] [LABEL_DIR ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from r2r.data_gen.shards import load_labels
from r2r.router.fit import label_tensors
from r2r.router.train import TrainConfig, metrics, predict, share_threshold, split_by_prompt
from r2r.serving.pair import load_pair, resolve_pair


def scores_report(scores: np.ndarray, labels: np.ndarray) -> dict:
    """ROC-AUC, PR-AUC and divergent-token recall at 2/5/10% routing rates, by the router's own metrics."""
    at_rate = {f"{rate:.2f}": metrics(scores, labels, share_threshold(scores, rate)) for rate in (0.02, 0.05, 0.1)}
    first = next(iter(at_rate.values()))
    return {"roc_auc": first["roc_auc"], "pr_auc": first["pr_auc"],
            "recall_at_rate": {rate: m["recall"] for rate, m in at_rate.items()}}


def main(label_dirs: list[Path], router_dir: str | None) -> dict:
    pair = load_pair(resolve_pair("testbed", None, None, router_dir), "cpu")
    router = pair.learned_policy()
    split = TrainConfig()
    out: dict = {}
    for root in label_dirs:
        ds, _ = load_labels(root)
        columns = ds.select_columns(["data_id", "hidden", "slm_token", "topk", "divergent"]).with_format("numpy")[:]
        _, val = split_by_prompt(label_tensors(columns), split.val_fraction, split.seed)
        labels = val.label.numpy().astype(int)
        out[root.name] = {"tokens": len(val), "divergent": int(labels.sum()),
                          "learned": scores_report(predict(router.net, val).numpy(), labels),
                          "confidence": scores_report(1.0 - np.exp(val.topk[:, 0].numpy()), labels)}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", help="router checkpoint (default: the testbed preset's)")
    parser.add_argument("labels", nargs="*", type=Path,
                        default=[Path("data/labels/testbed-math"), Path("data/labels/testbed-code")])
    args = parser.parse_args()
    print(json.dumps(main(args.labels, args.router), indent=2))
