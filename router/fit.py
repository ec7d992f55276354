"""Fit a router end to end: train, calibrate, save the checkpoint with its card metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from r2r.router.checkpoint import save_router, share_curve
from r2r.router.model import RouterConfig
from r2r.router.train import LabelTensors, TrainConfig, predict, split_by_prompt, train_router


@dataclass(frozen=True)
class SLMInfo:
    """What the router needs to know about its SLM."""

    model_dir: str
    fingerprint: str
    tokenizer_fingerprint: str
    hidden_size: int
    embeddings: torch.Tensor  # [vocab, embed] the SLM's input embedding table


class Positives(str, Enum):
    """What the router learns to flag; each is a label column of the same name."""

    DIVERGENT = "divergent"  # the verifier's path-divergence label (the published method)
    MISMATCH = "mismatch"  # every SLM token that differs from the LLM's reference, recovered from or not


def label_tensors(columns: dict, positives: Positives | str = Positives.DIVERGENT) -> LabelTensors:
    """From label columns (numpy): hidden, slm_token, topk, data_id and the `positives` column."""
    try:
        positives = Positives(positives)
    except ValueError as exc:
        raise ValueError(f"positives must be one of {[p.value for p in Positives]}, got {positives!r}") from exc
    return LabelTensors(
        hidden=torch.as_tensor(np.asarray(columns["hidden"], dtype=np.float32)),
        token=torch.as_tensor(np.asarray(columns["slm_token"], dtype=np.int64)),
        topk=torch.as_tensor(np.asarray(columns["topk"], dtype=np.float32)),
        label=torch.as_tensor(np.asarray(columns[positives.value], dtype=np.float32)),
        data_id=[str(d) for d in columns["data_id"]],
    )


def fit_router(data: LabelTensors, slm: SLMInfo, rcfg: RouterConfig, tcfg: TrainConfig, out: Path,
               label_meta: list[dict]) -> dict:
    """Train, calibrate and save a router; `label_meta`: one description per label set it learned from."""
    net, report = train_router(data, slm.embeddings, rcfg, tcfg)
    _, val = split_by_prompt(data, tcfg.val_fraction, tcfg.seed)
    meta = {
        "slm_dir": slm.model_dir, "slm_fingerprint": slm.fingerprint, "tokenizer_fingerprint": slm.tokenizer_fingerprint,
        "threshold": report["thresholds"]["default"], "thresholds": report["thresholds"],
        "share_curve": share_curve(predict(net, val).numpy()), "trainable_parameters": net.n_trainable(),
        "train_config": {k: v for k, v in tcfg.__dict__.items()}, "labels": label_meta,
        "validation": report["validation"], "best_epoch": report["best_epoch"],
    }
    save_router(out, net, meta)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
