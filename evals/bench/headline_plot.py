"""Plots of the headline benchmark: accuracy against tokens/s, one marker per configuration, one panel per
batch size, one PNG per family."""
from __future__ import annotations

from pathlib import Path

MARKERS = {"llm_alone": "s", "slm_alone": "v", "lossless_speculative": "D", "routed_sequential": "o",
           "routed_speculative": "*"}


def plot_headline(result: dict, out_prefix: Path) -> list[Path]:
    """Writes <out_prefix>_<family>.png for every family in `result`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    paths = []
    for family, by_batch in result.items():
        if family == "meta":
            continue
        fig, axes = plt.subplots(1, len(by_batch), figsize=(4.2 * len(by_batch), 3.8), squeeze=False)
        for ax, (batch, configs) in zip(axes[0], by_batch.items()):
            for name, run in configs.items():
                lo, hi = run["ci95"]
                ax.errorbar([run["tokens_per_s"]], [run["accuracy"]],
                            yerr=[[max(0.0, run["accuracy"] - lo)], [max(0.0, hi - run["accuracy"])]],
                            marker=MARKERS.get(name, "o"), markersize=9, capsize=3, linestyle="none", label=name)
            ax.set_title(f"{family}, {batch.replace('_', ' ')}")
            ax.set_xscale("log")  # the SLM alone runs ~25x the LLM alone: linear axes crowd the rest together
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("output tokens/s (log scale)")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8, loc="center left")
        fig.tight_layout()
        path = out_prefix.parent / f"{out_prefix.name}_{family}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
