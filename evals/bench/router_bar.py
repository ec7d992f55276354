"""The router bar on the testbed: learned vs confidence vs random routing at one LLM share.

For each family: SLM and LLM accuracy alone, then the learned router with its threshold set
for the target share (from its validation calibration), and the two baselines calibrated
to the LLM share the learned router actually produced: random at that rate, confidence
(1 - SLM max probability) with the threshold that routes that share of the SLM's
teacher-forced positions in the label data. Shares are measured, not assumed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r2r.evals.bench.budget_search import BudgetSearch, plateau_accuracy, search_budgets
from r2r.testbed.evaluate import solve_routed
from r2r.testbed.problem import grade
from r2r.testbed.splits import heldout
from r2r.router.policies import AlwaysLLM, AlwaysSLM, ConfidencePolicy, RandomPolicy, RoutingPolicy
from r2r.router.train import share_threshold
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.backends.fingerprint import router_model_fingerprint
from r2r.serving.pair import ModelPair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterBarConfig:
    target_share: dict[str, float]  # per family: the learned router's LLM-share budget
    n_problems: int = 500
    batch_size: int = 50
    seed: int = 0


def run_policy(pair: ModelPair, policy: RoutingPolicy, family: str, cfg: RouterBarConfig,
               split: str = "test") -> dict:
    """Accuracy and LLM share of greedy routed decoding. Speculative routing gives the sequential completions
    (the headline bench checks it on every run) and, batched, takes fewer LLM passes: 1.3-1.5x the tokens/s
    of sequential routing at batch 32 with the testbed LLM (bench/headline.json)."""
    problems = heldout(family, split, cfg.n_problems)
    gens = solve_routed(pair.slm, pair.llm, policy, pair.tokenizer, problems, cfg.batch_size, RoutingMode.SPECULATIVE)
    tokens = sum(len(g.token_ids) for g in gens)
    return {"accuracy": sum(grade(p, g.text) for p, g in zip(problems, gens)) / len(problems),
            "llm_share": sum(g.stats.llm_tokens for g in gens) / max(1, tokens), "tokens": tokens}


def confidence_threshold(top1_logprobs: np.ndarray, share: float) -> float:
    """The 1 - max-prob threshold that routes `share` of the given positions."""
    return share_threshold(1.0 - np.exp(top1_logprobs), share)


def top1_by_family(label_dirs: list[Path]) -> dict[str, np.ndarray]:
    """The SLM's top-1 log-prob at every labeled position, by testbed family (they calibrate the confidence
    baseline to the share the learned router used)."""
    from r2r.data_gen.shards import load_labels

    top1: dict[str, list] = {}
    for root in label_dirs:
        ds, _ = load_labels(root)
        cols = ds.select_columns(["data_id", "topk"]).with_format("numpy")[:]
        for data_id, topk in zip(cols["data_id"], cols["topk"]):
            top1.setdefault(str(data_id).split("-")[0], []).append(topk[0])
    unknown = set(top1) - {"math", "code"}
    if unknown:
        raise ValueError(f"the router bar needs testbed labels; found prompts of {sorted(unknown)}")
    return {f: np.asarray(v) for f, v in sorted(top1.items())}


def router_bar(pair: ModelPair, top1_by_family: dict[str, np.ndarray], cfg: RouterBarConfig) -> dict:
    learned = pair.learned_policy()
    result: dict = {"target_share": cfg.target_share, "n_problems": cfg.n_problems}
    for family, top1 in top1_by_family.items():
        if family not in cfg.target_share:
            continue
        row: dict = {}
        row["slm"] = run_policy(pair, AlwaysSLM(), family, cfg)["accuracy"]
        row["llm"] = run_policy(pair, AlwaysLLM(), family, cfg)["accuracy"]
        budget = learned.threshold_for_share(cfg.target_share[family])
        row["learned"] = run_policy(pair, learned.with_threshold(budget), family, cfg)
        share = row["learned"]["llm_share"]
        row["confidence"] = run_policy(pair, ConfidencePolicy(threshold=confidence_threshold(top1, share)), family, cfg)
        row["random"] = run_policy(pair, RandomPolicy(rate=share, seed=cfg.seed), family, cfg)
        gap = row["llm"] - row["slm"]
        for name in ("learned", "confidence", "random"):
            row[name]["gap_recovered"] = (row[name]["accuracy"] - row["slm"]) / gap if gap else None
        log.info("%s: %s", family, row)
        result[family] = row
    return result


def choose_budget(pair: ModelPair, family: str, budgets: list[float], max_share: float, n: int = 300,
                  search: BudgetSearch = BudgetSearch.FULL, plateau: dict | None = None, tolerance: float = 0.01,
                  on_progress: Callable[[dict], None] | None = None, resume: dict | None = None) -> dict:
    """The learned router's budget for a family, chosen on *validation* problems: the largest whose routed
    LLM share (what decoding actually spends, which differs from the token-level calibration) stays
    within `max_share`. An up-to-plateau search needs `plateau`, the family's plateau run; `on_progress`
    sees the result so far after each budget (marked incomplete); `resume`, an interrupted run's last result,
    lends its rows when it was made the same way with the same models (else ValueError)."""
    learned = pair.learned_policy()
    cfg = RouterBarConfig(target_share={}, n_problems=n)
    head: dict = {"family": family, "split": "validation", "n_problems": n, "max_share": max_share,
                  "search": search.value, "models": {"slm": pair.slm.fingerprint, "llm": pair.llm.fingerprint,
                                                     "router": router_model_fingerprint(pair.spec.router)}}
    target = None
    if search is BudgetSearch.UP_TO_PLATEAU:
        if plateau is None or plateau["family"] != family:
            raise ValueError(f"an up-to-plateau search needs a {family} plateau run")
        _check_same_problems_and_models(plateau, head, "the plateau run")
        target = plateau_accuracy(plateau) - tolerance
        head["target_accuracy"] = target
    done: dict[str, dict] = {}
    if resume is not None and not resume.get("complete", True):  # a finished run is measured again
        differs = sorted(k for k in head if resume.get(k) != head[k])
        if differs:
            raise ValueError(f"cannot resume a run that differs in {', '.join(differs)}")
        done = resume["budgets"]

    def result(rows: dict[str, dict], complete: bool) -> dict:
        fitting = [float(b) for b, row in rows.items() if row["llm_share"] <= max_share]
        return {**head, "budgets": rows, "chosen": max(fitting) if fitting else None, "complete": complete}

    def evaluate(budget: float) -> dict:
        if str(budget) in done:
            return done[str(budget)]
        return run_policy(pair, learned.with_threshold(learned.threshold_for_share(budget)), family, cfg, "validation")

    on_row = None if on_progress is None else (lambda rows: on_progress(result(rows, complete=False)))
    return result(search_budgets(evaluate, budgets, search, max_share, target, on_row), complete=True)


def _check_same_problems_and_models(run: dict, other: dict, what: str) -> None:
    """Budget runs compared with each other must have decoded the same validation problems with the same
    models (the router's default threshold aside: `router_model_fingerprint`)."""
    differs = sorted(k for k in ("split", "n_problems", "models") if run.get(k) != other.get(k))
    if differs:
        raise ValueError(f"{what} differs from the {other.get('family', '')} run it goes with in {', '.join(differs)}")


OPERATING_POINT_RULE = ("the smallest budget whose validation accuracy is within {points:g} point(s) of the accuracy "
                        "at the largest budget whose routed LLM share stays within {max_share:.0%}")


def operating_point(plateau: dict, low: dict, tolerance: float = 0.01) -> float:
    """A family's default LLM-share budget, from two `choose_budget` runs on validation problems: the smallest
    budget of `low` whose accuracy is within `tolerance` of the accuracy at `plateau`'s chosen budget (the
    LLM's plateau: the largest budget that fits the share cap). Past it, more LLM tokens buy no accuracy."""
    if plateau["family"] != low["family"]:
        raise ValueError(f"budget runs of different families: {plateau['family']} and {low['family']}")
    _check_same_problems_and_models(low, plateau, f"the {low['family']} low-budget run")
    best = plateau_accuracy(plateau)
    if "target_accuracy" in low and low["target_accuracy"] != best - tolerance:
        raise ValueError(f"{low['family']}: the low-budget run walked up to accuracy {low['target_accuracy']:.4f}, "
                         f"not {best - tolerance:.4f} (this plateau and tolerance): run it again with them")
    good = [float(b) for b, row in low["budgets"].items() if row["accuracy"] >= best - tolerance]
    if not good:
        raise ValueError(f"{low['family']}: no budget in {sorted(low['budgets'])} comes within "
                         f"{100 * tolerance:g} point(s) of "
                         f"the plateau's {best:.1%}; try larger budgets")
    return min(good)


def default_operating_point(plateau: dict[str, dict], low: dict[str, dict], router: Path,
                            tolerance: float = 0.01) -> dict:
    """The default budget of `router` from each family's plateau and low-budget runs of it (`choose_budget`
    results keyed by family): every family's `operating_point`, and the largest of them, so no family falls
    below its plateau. Returns {"rule", "chosen" (per family, as `--share` reads it), "default_share"}."""
    if set(plateau) != set(low):
        raise ValueError(f"--plateau covers {sorted(plateau)} but --low {sorted(low)}")
    measured = router_model_fingerprint(router)
    if other := sorted(f for f, run in plateau.items() if run.get("models", {}).get("router") != measured):
        raise ValueError(f"the {', '.join(other)} budget runs measured another router than {router}: "
                         "run them with --router pointing at it")
    chosen = {f: operating_point(plateau[f], low[f], tolerance) for f in sorted(plateau)}
    max_share = max(run["max_share"] for run in plateau.values())
    return {"rule": OPERATING_POINT_RULE.format(points=100 * tolerance, max_share=max_share),
            "chosen": ",".join(f"{f}={b:g}" for f, b in chosen.items()), "default_share": max(chosen.values())}
