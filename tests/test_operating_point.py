"""The default operating point: the validation rule, and the router's default threshold it sets."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from r2r.evals.bench.budget_search import BudgetSearch, plateau_accuracy, search_budgets
from r2r.evals.bench.router_bar import default_operating_point, operating_point
from r2r.router.checkpoint import load_router, save_router, set_default_threshold, share_curve
from r2r.router.model import RouterConfig, RouterNet
from r2r.serving.backends.fingerprint import router_model_fingerprint


def budgets(family: str, accuracies: dict[str, float], chosen: float | None = None) -> dict:
    return {"family": family, "max_share": 0.2, "chosen": chosen,
            "budgets": {b: {"accuracy": a, "llm_share": float(b)} for b, a in accuracies.items()}}


def test_smallest_budget_within_a_point_of_the_plateau() -> None:
    plateau = budgets("math", {"0.15": 0.90, "0.18": 0.93}, chosen=0.18)
    low = budgets("math", {"0.05": 0.85, "0.07": 0.921, "0.09": 0.925, "0.11": 0.94})
    assert operating_point(plateau, low) == 0.07  # 0.921 >= 0.93 - 0.01; 0.05 is not
    assert operating_point(plateau, low, tolerance=0.0) == 0.11


def test_plateau_accuracy_is_read_at_the_chosen_budget_as_json_writes_it() -> None:
    """Budget keys are written as str(float) ("0.2"); the chosen budget is found by value, not by formatting."""
    plateau = {"family": "code", "max_share": 0.2, "chosen": 0.2,
               "budgets": {str(b): {"accuracy": a, "llm_share": b} for b, a in ((0.2, 0.8), (0.21, 0.9))}}
    assert plateau_accuracy(json.loads(json.dumps(plateau))) == 0.8


@pytest.mark.parametrize("seed", range(40))
def test_early_stopping_searches_choose_what_the_full_sweep_chooses(seed: int) -> None:
    """Against brute force: on random rows (shares and accuracies not monotone in the budget), the down-to-fit
    walk picks the full sweep's plateau budget and the up-to-plateau walk gives the operating point the full
    low-budget sweep gives, each running only budgets the sweep runs."""
    rng = np.random.default_rng(seed)
    high = [round(0.15 + 0.01 * i, 2) for i in range(16)]
    low = [round(0.05 + 0.01 * i, 2) for i in range(11)]
    table = {b: {"accuracy": float(rng.choice([0.8, 0.85, 0.9])), "llm_share": float(b + rng.normal(0, 0.03))}
             for b in high + low}
    runs: list[float] = []

    def evaluate(budget: float) -> dict:
        runs.append(budget)
        return table[budget]

    def run(rows: dict, family: str = "math") -> dict:
        fitting = [float(b) for b, row in rows.items() if row["llm_share"] <= 0.2]
        return {"family": family, "max_share": 0.2, "budgets": rows, "chosen": max(fitting) if fitting else None}

    full_plateau = run(search_budgets(evaluate, high, BudgetSearch.FULL, 0.2))
    runs.clear()
    saved: list[int] = []
    walked = run(search_budgets(evaluate, high, BudgetSearch.DOWN_TO_FIT, 0.2,
                                on_row=lambda rows: saved.append(len(rows))))
    assert walked["chosen"] == full_plateau["chosen"]
    assert runs == sorted((b for b in high if full_plateau["chosen"] is None or b >= full_plateau["chosen"]),
                          reverse=True), "the walk runs exactly the budgets from the largest down to the chosen one"
    assert saved == list(range(1, len(runs) + 1)), "progress is handed on after every budget"
    if full_plateau["chosen"] is None:
        return
    full_low = run(search_budgets(evaluate, low, BudgetSearch.FULL, 0.2))
    runs.clear()
    target = plateau_accuracy(walked) - 0.01
    walked_low = run(search_budgets(evaluate, low, BudgetSearch.UP_TO_PLATEAU, 0.2, target))
    assert runs == sorted(runs) and set(runs) <= set(low)
    try:
        expected = operating_point(full_plateau, full_low)
    except ValueError:
        assert len(runs) == len(low), "with no budget near the plateau the walk runs them all"
        return
    assert operating_point(walked, walked_low) == expected
    assert runs[-1] == expected, "the walk stops at the operating point"


def test_a_low_run_walked_to_another_target_is_refused() -> None:
    plateau = budgets("math", {"0.2": 0.93}, chosen=0.2)
    low = {**budgets("math", {"0.05": 0.85, "0.07": 0.921}), "target_accuracy": 0.93 - 0.02}
    with pytest.raises(ValueError, match="walked up to accuracy"):
        operating_point(plateau, low, tolerance=0.01)
    assert operating_point(plateau, low, tolerance=0.02) == 0.07


def test_up_to_plateau_needs_the_plateau_accuracy() -> None:
    with pytest.raises(ValueError, match="plateau's accuracy"):
        search_budgets(lambda b: {}, [0.1], BudgetSearch.UP_TO_PLATEAU, 0.2)


@pytest.mark.parametrize("plateau, low, fragment", [
    (budgets("math", {"0.20": 0.9}, chosen=None), budgets("math", {"0.1": 0.9}), "no budget fits"),
    (budgets("math", {"0.20": 0.9}, chosen=0.2), budgets("code", {"0.1": 0.9}), "different families"),
    (budgets("math", {"0.20": 0.9}, chosen=0.2), budgets("math", {"0.1": 0.5}), "comes within"),
    ({**budgets("math", {"0.20": 0.9}, chosen=0.2), "n_problems": 300},
     {**budgets("math", {"0.1": 0.9}), "n_problems": 30}, "differs from the math run it goes with in n_problems"),
    ({**budgets("math", {"0.20": 0.9}, chosen=0.2), "models": {"router": "a"}},
     {**budgets("math", {"0.1": 0.9}), "models": {"router": "b"}}, "in models"),
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
    measured = router_model_fingerprint(tmp_path)
    threshold = set_default_threshold(tmp_path, 0.09, "a rule")
    assert router_model_fingerprint(tmp_path) == measured, "budget runs of the router stay its runs"
    assert abs((probs > threshold).mean() - 0.09) < 0.01, "the default routes the chosen share"
    meta = json.loads((tmp_path / "router.json").read_text())
    assert meta["thresholds"]["operating_point"] == {"share": 0.09, "threshold": threshold, "rule": "a rule"}
    assert load_router(tmp_path, "abc", table, 4).threshold == threshold


def test_a_router_the_budget_runs_did_not_measure_is_refused(tmp_path) -> None:
    """`operating-point` writes its threshold into --router: only into the router its budget runs measured
    (weights or share curve changed since: another router)."""
    net = RouterNet(RouterConfig(hidden_size=8, embed_size=8, top_k=4, width=8, depth=1), torch.randn(20, 8))
    save_router(tmp_path, net, {"slm_fingerprint": "abc", "threshold": 0.9,
                                "share_curve": share_curve(np.random.default_rng(0).random(500))})
    runs = {"models": {"router": router_model_fingerprint(tmp_path)}, "split": "validation", "n_problems": 3}
    plateau = {"math": {**budgets("math", {"0.2": 0.93}, chosen=0.2), **runs}}
    low = {"math": {**budgets("math", {"0.05": 0.85, "0.07": 0.925}), **runs}}
    assert default_operating_point(plateau, low, tmp_path)["default_share"] == 0.07
    save_router(tmp_path, net, {"slm_fingerprint": "abc", "threshold": 0.9,
                                "share_curve": share_curve(np.random.default_rng(1).random(500))})
    with pytest.raises(ValueError, match="measured another router"):
        default_operating_point(plateau, low, tmp_path)


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", "bench", *args],
                          capture_output=True, text=True)


def test_cli_needs_budget_runs(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    for args, fragment in ((["--plateau", str(tmp_path / "none.json"), "--low", str(bad)], "no such file"),
                           (["--plateau", str(bad), "--low", str(bad)], "is not a `r2r bench router-budget` result")):
        proc = _bench("operating-point", "--router", str(tmp_path), *args)
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr


def _router_budget(out, *args: str) -> subprocess.CompletedProcess:
    return _bench("router-budget", "--family", "math", "--out", str(out), *args)


def test_an_interrupted_budget_run_resumes_with_its_rows(testbed_dirs, tmp_path) -> None:
    """A run keeps the rows it has (written after each budget); --resume runs only the missing budgets and
    refuses a file made another way. The testbed SLM plays both models: only the bookkeeping is under test."""
    pair = ["--slm", str(testbed_dirs["slm"]), "--llm", str(testbed_dirs["slm"]), "--router",
            str(testbed_dirs["router"]), "--n", "3"]
    out = tmp_path / "budget.json"
    full = _router_budget(out, *pair, "--budgets", "0.1,0.3")
    assert full.returncode == 0, full.stderr
    first = json.loads(out.read_text())
    assert sorted(first["budgets"]) == ["0.1", "0.3"] and first["models"]["llm"] == first["models"]["slm"]
    assert first["complete"]
    interrupted = {**first, "complete": False, "budgets": {"0.1": {**first["budgets"]["0.1"], "accuracy": -1.0}}}
    out.write_text(json.dumps(interrupted))  # a marked row
    refused = _bench("operating-point", "--router", str(tmp_path), "--plateau", str(out), "--low", str(out))
    assert refused.returncode == 2 and "interrupted run" in refused.stderr, refused.stderr
    resumed = _router_budget(out, *pair, "--budgets", "0.1,0.3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    rows = json.loads(out.read_text())["budgets"]
    assert rows["0.1"]["accuracy"] == -1.0, "a row it had is kept, not rerun"
    assert rows["0.3"] == first["budgets"]["0.3"], "the missing row is run again, to the same result"
    finished = json.loads(out.read_text())
    assert finished["complete"]
    out.write_text(json.dumps(interrupted))
    other = _router_budget(out, *pair[:-1], "2", "--budgets", "0.1,0.3", "--resume")
    assert other.returncode == 2 and "differs in n_problems" in other.stderr, other.stderr
    out.write_text(json.dumps({**finished, "budgets": interrupted["budgets"]}))  # marked, but complete
    again = _router_budget(out, *pair, "--budgets", "0.1,0.3", "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads(out.read_text())["budgets"] == first["budgets"], "a finished run is measured again"
