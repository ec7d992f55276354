"""Router checkpoints (safetensors + JSON) and the learned routing policy.

The JSON records the SLM and tokenizer fingerprints the router was trained for; loading it
next to another SLM is an error, because its features would mean something else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from r2r.router.features import features_from_outputs
from r2r.router.model import FoldedRouter, RouterConfig, RouterNet
from r2r.router.native_router import NativeBuild, NativeRouter, native_router
from r2r.router.policies import PolicyKind, RouteInput
from r2r.router.train import share_threshold

WEIGHTS, CONFIG = "router.safetensors", "router.json"
SHARE_GRID = [round(x, 2) for x in np.arange(0.01, 1.0, 0.01)]


def share_curve(val_probs: np.ndarray) -> list[list[float]]:
    """[(llm_share, threshold)] on validation tokens: the threshold that routes that share."""
    return [[s, share_threshold(val_probs, s)] for s in SHARE_GRID]


def save_router(out_dir: Path, net: RouterNet, meta: dict) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / WEIGHTS))
    (out_dir / CONFIG).write_text(json.dumps({"config": net.cfg.to_json(), **meta}, indent=2) + "\n")


def curve_threshold(curve: list[list[float]], share: float) -> float:
    """The threshold a share curve (`share_curve`) gives for routing about `share` of tokens to the LLM."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"llm_share must be in [0, 1], got {share}")
    if share <= 0.0:
        return 1.0
    if share >= 1.0:
        return -1.0
    return float(np.interp(share, [s for s, _ in curve], [t for _, t in curve]))


@dataclass
class LearnedPolicy:
    """The trained router as a RoutingPolicy: score = sigmoid(router(features))."""

    net: RouterNet
    threshold: float
    curve: list[list[float]] = field(default_factory=list)
    kind: PolicyKind = PolicyKind.LEARNED
    needs_hidden: bool = True
    folded: FoldedRouter | None = field(default=None, repr=False)  # built from `net` on first use
    native: NativeRouter | None = field(default=None, repr=False)  # `folded` compiled; scores the rows it applies to

    def scores(self, inputs: RouteInput) -> torch.Tensor:
        assert inputs.hidden is not None, "the learned router needs the SLM's hidden states"
        if self.native is not None and self.native.applies(inputs.logits, inputs.hidden):
            return self.native(inputs.logits, inputs.hidden, inputs.kind)
        if self.folded is None:
            self.folded = FoldedRouter(self.net)
        feats = features_from_outputs(inputs.logits, inputs.hidden, self.net.cfg.top_k, inputs.kind)
        with torch.no_grad():
            return torch.sigmoid(self.folded(feats.hidden, feats.token, feats.topk))

    def threshold_for_share(self, share: float) -> float:
        """The validation-calibrated threshold that routes about `share` of tokens to the LLM."""
        return curve_threshold(self.curve, share)

    def with_threshold(self, threshold: float) -> LearnedPolicy:
        return LearnedPolicy(self.net, threshold, self.curve, folded=self.folded, native=self.native)


def set_default_threshold(router_dir: Path, share: float, rule: str) -> float:
    """Make the threshold that routes `share` of validation tokens (the router's own share curve) the
    router's default, recording the operating point and the rule that chose it; returns the threshold."""
    path = router_dir / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"no router checkpoint at {router_dir} ({CONFIG} expected)")
    meta = json.loads(path.read_text())
    threshold = curve_threshold(meta.get("share_curve", []), share)
    meta["thresholds"]["operating_point"] = {"share": share, "threshold": threshold, "rule": rule}
    meta["thresholds"]["default"] = meta["threshold"] = threshold
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return threshold


def load_router(router_dir: Path, slm_fingerprint: str, embeddings: torch.Tensor, returned_top_k: int,
                native: NativeBuild | None = NativeBuild()) -> LearnedPolicy:
    """Load a router for the SLM with `slm_fingerprint`; `embeddings` is that SLM's input table and `returned_top_k`
    how many log-probs its backend returns per row (the router's top-k features must be among them). With `native`
    (the default) few-row CPU scoring goes through the compiled router where it builds (`router.native_router`)."""
    from safetensors.torch import load_file

    cfg_path, w_path = router_dir / CONFIG, router_dir / WEIGHTS
    if not cfg_path.exists() or not w_path.exists():
        raise FileNotFoundError(f"no router checkpoint at {router_dir} ({CONFIG} and {WEIGHTS} expected)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("slm_fingerprint") != slm_fingerprint:
        raise ValueError(f"the router at {router_dir} was trained for SLM {meta.get('slm_fingerprint')} "
                         f"({meta.get('slm_dir')}), not this SLM ({slm_fingerprint})")
    cfg = RouterConfig(**meta["config"])
    if cfg.top_k > returned_top_k:
        raise ValueError(f"the router at {router_dir} reads the top-{cfg.top_k} log-probs but the SLM's backend "
                         f"returns only the top {returned_top_k}; serve the SLM with a top-k of at least {cfg.top_k}")
    net = RouterNet(cfg, embeddings)
    net.load_state_dict(load_file(str(w_path)))
    net.eval()
    folded = FoldedRouter(net)
    return LearnedPolicy(net, float(meta["threshold"]), meta.get("share_curve", []), folded=folded,
                         native=None if native is None else native_router(folded, native))
