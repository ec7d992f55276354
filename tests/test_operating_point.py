"""The default operating point: the validation rule, and the router's default threshold it sets."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from evals.bench.router_bar import operating_point
from router.checkpoint import load_router, save_router, set_default_threshold, share_curve
from router.model import RouterConfig, RouterNet


def budgets(family: str, accuracies: dict[str, float], chosen: float | None = None) -> dict:
    return {"family": family, "max_share": 0.2, "chosen": chosen,
            "budgets": {b: {"accuracy": a, "llm_share": float(b)} for b, a in accuracies.items()}}


def test_smallest_budget_within_a_point_of_the_plateau() -> None:
    plateau = budgets("math", {"0.15": 0.90, "0.18": 0.93}, chosen=0.18)
    low = budgets("math", {"0.05": 0.85, "0.07": 0.921, "0.09": 0.925, "0.11": 0.94})
    assert operating_point(plateau, low) == 0.07  # 0.921 >= 0.93 - 0.01; 0.05 is not
    assert operating_point(plateau, low, tolerance=0.0) == 0.11


@pytest.mark.parametrize("plateau, low, fragment", [
    (budgets("math", {"0.20": 0.9}, chosen=None), budgets("math", {"0.1": 0.9}), "no budget fits"),
    (budgets("math", {"0.20": 0.9}, chosen=0.2), budgets("code", {"0.1": 0.9}), "different families"),
    (budgets("math", {"0.20": 0.9}, chosen=0.2), budgets("math", {"0.1": 0.5}), "comes within"),
])
def test_rule_errors_are_clear(plateau: dict, low: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        operating_point(plateau, low)


def test_default_threshold_routes_the_chosen_share(tmp_path) -> None:
    """The default set for a share is the threshold at which the router flags that share of the
    validation scores its curve was built from, and loading the router uses it."""
    table = torch.randn(20, 8)
    net = RouterNet(RouterConfig(hidden_size=8, embed_size=8, top_k=4, width=8, depth=1), table)
    probs = np.random.default_rng(0).random(5000)
    save_router(tmp_path, net, {"slm_fingerprint": "abc", "threshold": 0.9, "share_curve": share_curve(probs),
                                "thresholds": {"recall": {"target": 0.95, "threshold": 0.9}}})
    threshold = set_default_threshold(tmp_path, 0.09, "a rule")
    assert abs((probs > threshold).mean() - 0.09) < 0.01, "the default routes the chosen share"
    meta = json.loads((tmp_path / "router.json").read_text())
    assert meta["thresholds"]["operating_point"] == {"share": 0.09, "threshold": threshold, "rule": "a rule"}
    assert load_router(tmp_path, "abc", table).threshold == threshold


def test_cli_needs_budget_runs(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    for args, fragment in ((["--plateau", str(tmp_path / "none.json"), "--low", str(bad)], "no such file"),
                           (["--plateau", str(bad), "--low", str(bad)], "is not a `r2r bench router-budget` result")):
        proc = subprocess.run([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", "bench",
                               "operating-point", "--router", str(tmp_path), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
