"""Sweep reports: per-run JSON with confidence intervals, and Pareto plots (accuracy vs LLM share,
vs average activated parameters, vs wall time), one line per policy. Rebuilt from the run files."""
from __future__ import annotations

import json
import math
from pathlib import Path


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(run_dir: Path) -> dict:
    meta_path = run_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{run_dir} is not an eval run (no meta.json)")
    meta = json.loads(meta_path.read_text())
    rows_by_key: dict[str, dict] = {}
    for path in sorted((run_dir / "runs").glob("*.jsonl")):
        rows = {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["id"]] = row
        if not rows:
            continue
        n, correct = len(rows), sum(r["correct"] for r in rows.values())
        tokens = sum(r["tokens"] for r in rows.values())
        share = sum(r["llm_tokens"] for r in rows.values()) / max(1, tokens)
        seconds = sum(r["seconds"] for r in rows.values())
        policy, _, value = path.stem.partition("@")
        rows_by_key[path.stem] = {
            "policy": policy, "setting": float(value), "n": n, "accuracy": correct / n,
            "ci95": wilson(correct, n), "llm_share": share,
            "avg_params": meta["slm_params"] + share * meta["llm_params"],
            "tokens_per_s": tokens / seconds if seconds else 0.0, "wall_seconds": seconds,
            "complete": n == meta["n_problems"],
            "problems": sorted(rows.values(), key=lambda r: r["id"]),
        }
    return {"meta": meta, "runs": rows_by_key}


def write_report(run_dir: Path) -> dict:
    """report.json (without per-problem rows when they are large) and three PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(run_dir)
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    by_policy: dict[str, list[dict]] = {}
    for run in summary["runs"].values():
        by_policy.setdefault(run["policy"], []).append(run)
    axes = {"llm_share": "LLM token share", "avg_params": "average activated parameters per token",
            "wall_seconds": "wall time (s, summed over problems)"}
    for key, label in axes.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for policy, runs in sorted(by_policy.items()):
            runs = sorted(runs, key=lambda r: r[key])
            xs, ys = [r[key] for r in runs], [r["accuracy"] for r in runs]
            err = [[r["accuracy"] - r["ci95"][0] for r in runs], [r["ci95"][1] - r["accuracy"] for r in runs]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=policy)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{summary['meta']['task']} ({summary['meta']['pair']} pair)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / f"accuracy_vs_{key}.png", dpi=120)
        plt.close(fig)
    return summary
