"""A router's model card: its SLM, labels (labeling LLM, verifier, task), validation metrics, thresholds and, when
measured, the held-out accuracy table of the router bar."""
from __future__ import annotations

import json
from pathlib import Path


def accuracy_table(bar: dict) -> list[str]:
    lines = ["| family | SLM | LLM | learned (share) | confidence (share) | random (share) | gap recovered (learned) |",
             "|---|---|---|---|---|---|---|"]
    for family in ("math", "code"):
        if family not in bar:
            continue
        r = bar[family]
        cell = lambda p: f"{r[p]['accuracy']:.1%} ({r[p]['llm_share']:.1%})"  # noqa: E731
        gap = r["learned"]["gap_recovered"]
        lines.append(f"| {family} | {r['slm']:.1%} | {r['llm']:.1%} | {cell('learned')} | {cell('confidence')} | "
                     f"{cell('random')} | {'n/a' if gap is None else f'{gap:.1%}'} |")
    return lines


def _auc(value: float | None) -> str:
    return "n/a (one class)" if value is None else f"{value:.3f}"


def _shared(labels: list[dict], key: str):
    """The value of `key` that every label set has, or None when they differ or lack it."""
    values = {lab.get(key) for lab in labels}
    return values.pop() if len(values) == 1 else None


def _operating_point(thresholds: dict) -> list[str]:
    point = thresholds.get("operating_point")
    if point is None:
        return []
    return [f"| default threshold (`r2r serve`, `r2r generate`) | {point['threshold']:.3f}: the operating point, "
            f"{point['share']:.0%} of validation tokens to the LLM, chosen by {point['rule']} |"]


def write_router_card(router_dir: Path, bar: dict | None) -> None:
    meta = json.loads((router_dir / "router.json").read_text())
    cfg, val = meta["config"], meta["validation"]
    positives = {lab.get("positives", "divergent") for lab in meta["labels"]}
    routed = {lab.get("continue_with", "llm") for lab in meta["labels"]} == {"routed"}
    share, router = _shared(meta["labels"], "continue_share"), _shared(meta["labels"], "continue_router")
    budget = f" at an LLM share of {share:.0%}" if share is not None else ""
    which = f" (fingerprint {router})" if router is not None else ""
    continuer = (f"routed decoding with the previous router{which}{budget}, as in serving, continues the SLM's branch"
                 if routed else "the LLM continues the SLM's branch")
    verifier = _shared(meta["labels"], "verifier") or "answer"
    task = _shared(meta["labels"], "task")
    judged = {"answer": "divergent iff the final answer changes", "judge": "divergent as an instruct model judged it",
              "embedding": "divergent iff the branches' sentence embeddings part"}.get(verifier, verifier)
    how = f"`r2r label --verifier {verifier}{f' --task {task}' if task else ''}`"
    trained_on = (f"path-divergence labels from {how} ({continuer} to the end; {judged})"
                  if positives == {"divergent"} else
                  "SLM/LLM mismatches from `r2r label` (every SLM token that differs from the LLM's reference)")
    llms = sorted({str(lab.get("llm_dir") or lab.get("llm_fingerprint")) for lab in meta["labels"]})
    lines = [
        f"# r2r router for {meta['slm_dir']}", "",
        f"Residual-MLP router over the SLM's features (last hidden state, embedding of its top token, sorted top-k "
        f"log-probs), trained with class-balanced BCE on {trained_on}. Labeling LLM: {', '.join(llms)}; a router "
        "is trained for the LLM whose divergences it learned (route another LLM with a router labeled for it).",
        "", "| | |", "|---|---|",
        f"| network | width {cfg['width']}, {cfg['depth']} residual blocks, top-{cfg['top_k']} log-probs; "
        f"{meta['trainable_parameters']:,} trainable parameters |",
        f"| SLM | {meta['slm_dir']} (fingerprint {meta['slm_fingerprint']}) |",
    ]
    for lab in meta["labels"]:
        llm = lab.get("llm_dir") or lab.get("llm_fingerprint")
        unverifiable = lab.get("unverifiable", 0)  # label sets made before it was counted have none
        neutral = lab.get("neutral", lab.get("mismatches", 0) - lab.get("divergent", 0) - unverifiable)
        name = f"{Path(lab['dir']).name}{f' (LLM {llm})' if llm else ''}"
        lines.append(f"| labels {name} | {lab.get('tokens', 0):,} tokens, "
                     f"{lab.get('mismatches', 0):,} mismatches ({lab.get('mismatch_rate', 0):.1%}), "
                     f"{lab.get('divergent', 0):,} divergent ({lab.get('divergent_rate', 0):.1%}), "
                     f"{neutral:,} neutral, {unverifiable:,} unverifiable "
                     "(left out of training) |")
    lines += [
        f"| validation (held-out prompts) | ROC-AUC {_auc(val['roc_auc'])}, PR-AUC {_auc(val['pr_auc'])}; "
        f"at the recall threshold {val['threshold']:.3f}: recall {val['recall']:.1%}, "
        f"precision {val['precision']:.1%}, LLM rate {val['llm_rate']:.1%} |",
        f"| thresholds | recall {meta['thresholds']['recall']['target']:.0%} -> "
        f"{meta['thresholds']['recall']['threshold']:.3f}; any LLM share via the stored share curve |",
        *_operating_point(meta["thresholds"]),
        "",
    ]
    if bar:
        budgets = ", ".join(f"{f} {v:.0%}" for f, v in bar["target_share"].items())
        lines += [f"## Held-out accuracy ({bar['n_problems']} test problems per family, greedy; the learned router's "
                  f"LLM-share budget: {budgets}; the baselines at the share it actually used)", "",
                  *accuracy_table(bar), ""]
    lines += ["Reproduce: `r2r label`, then `r2r train-router` (the data path: docs/ARCHITECTURE.md); the testbed "
              "routers' commands are in bench/reproduce_testbed.sh, their numbers in bench/README.md.", ""]
    (router_dir / "README.md").write_text("\n".join(lines))
