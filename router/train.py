"""Router training: class-balanced BCE, AdamW, early stopping on validation loss, threshold calibration.

The split is by prompt (data_id), so validation measures generalisation to unseen problems.
Calibration picks the threshold on validation tokens either for a recall target on
divergent tokens (the smallest LLM share with recall >= target, as in the published method)
or for an LLM-token share budget; both are stored in the checkpoint.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from r2r.router.features import RouterFeatures
from r2r.router.model import RouterConfig, RouterNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 5e-4
    patience: int = 4
    val_fraction: float = 0.1
    seed: int = 0
    target_recall: float = 0.95
    target_share: float | None = None  # when set, calibrate to this LLM share instead of recall

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, "
                             f"{self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")
        if self.target_share is not None and not 0.0 < self.target_share < 1.0:
            raise ValueError(f"target LLM share must be in (0, 1), got {self.target_share}")


@dataclass
class LabelTensors:
    hidden: torch.Tensor  # [n, hidden]
    token: torch.Tensor  # [n]
    topk: torch.Tensor  # [n, k]
    label: torch.Tensor  # [n] float 0/1
    data_id: list[str]

    def subset(self, idx: torch.Tensor) -> LabelTensors:
        ids = idx.tolist()
        return LabelTensors(self.hidden[idx], self.token[idx], self.topk[idx], self.label[idx],
                            [self.data_id[i] for i in ids])

    def features(self) -> RouterFeatures:
        return RouterFeatures(self.hidden, self.token, self.topk)

    def __len__(self) -> int:
        return self.label.shape[0]


def split_by_prompt(data: LabelTensors, val_fraction: float, seed: int) -> tuple[LabelTensors, LabelTensors]:
    """Deterministic prompt-level split: a prompt goes to validation iff hash(seed, id) < val_fraction."""
    def is_val(data_id: str) -> bool:
        digest = hashlib.blake2b(f"{seed}:{data_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < val_fraction

    mask = torch.tensor([is_val(d) for d in data.data_id])
    return data.subset(torch.nonzero(~mask).squeeze(1)), data.subset(torch.nonzero(mask).squeeze(1))


def predict(net: RouterNet, data: LabelTensors, batch: int = 8192) -> torch.Tensor:
    """Divergence probabilities [n]."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(data), batch):
            sl = slice(i, i + batch)
            out.append(torch.sigmoid(net(RouterFeatures(data.hidden[sl], data.token[sl], data.topk[sl]))))
    return torch.cat(out) if out else torch.zeros(0)


def share_threshold(scores: np.ndarray, share: float) -> float:
    """The threshold above which `share` of the given scores lie (routing is score > threshold)."""
    return float(np.quantile(scores, 1.0 - share))


def calibrate(probs: np.ndarray, labels: np.ndarray, target_recall: float | None, target_share: float | None) -> float:
    """Threshold for a recall target (smallest share with recall >= target) or an LLM-share budget.

    A position is routed when prob > threshold.
    """
    assert probs.shape == labels.shape, "one probability per label"
    if target_share is not None:
        return share_threshold(probs, target_share)
    positives = np.sort(probs[labels == 1])
    if positives.size == 0:
        raise ValueError("no divergent tokens in the validation labels: cannot calibrate for recall")
    # route the top `keep` positives: the threshold sits just below the keep-th largest positive score
    keep = int(np.ceil(target_recall * positives.size))
    return float(np.nextafter(positives[positives.size - keep], -np.inf))


def metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    routed = probs > threshold
    both = labels.min() != labels.max()
    tp = int((routed & (labels == 1)).sum())
    return {
        "roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "pr_auc": float(average_precision_score(labels, probs)) if both else None,
        "recall": tp / max(1, int(labels.sum())),
        "precision": tp / max(1, int(routed.sum())),
        "llm_rate": float(routed.mean()),
        "threshold": threshold,
        "n": int(labels.size),
        "positives": int(labels.sum()),
    }


def train_router(data: LabelTensors, embeddings: torch.Tensor, rcfg: RouterConfig, cfg: TrainConfig,
                 progress=None) -> tuple[RouterNet, dict]:
    """Train with early stopping; returns the best network and a report with calibrated thresholds.

    The network's initialization draws from torch's default generator, seeded with `cfg.seed` inside a
    forked RNG state: the caller's random state is what it was before."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return _train_router(data, embeddings, rcfg, cfg, progress)


def _train_router(data: LabelTensors, embeddings: torch.Tensor, rcfg: RouterConfig, cfg: TrainConfig,
                  progress) -> tuple[RouterNet, dict]:
    train, val = split_by_prompt(data, cfg.val_fraction, cfg.seed)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"too few prompts to split ({len(data)} tokens): need both train and validation prompts")
    n_pos = float(train.label.sum())
    if n_pos == 0:
        raise ValueError("no divergent tokens in the training labels")
    pos_weight = torch.tensor((len(train) - n_pos) / n_pos)  # class balance: positives weigh as much as negatives
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    net = RouterNet(rcfg, embeddings)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_loss, best_state, best_epoch, stale = float("inf"), None, -1, 0
    history = []
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for i in range(0, len(train), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = loss_fn(net(RouterFeatures(train.hidden[idx], train.token[idx], train.topk[idx])), train.label[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_probs = predict(net, val).clamp(1e-7, 1 - 1e-7)
        val_loss = float(loss_fn(torch.logit(val_probs), val.label))
        history.append({"epoch": epoch, "train_loss": total / len(train), "val_loss": val_loss})
        log.info("router epoch %d train %.4f val %.4f", epoch, total / len(train), val_loss)
        if progress:
            progress(epoch + 1, cfg.epochs)
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    assert best_state is not None
    net.load_state_dict(best_state)
    probs, labels = predict(net, val).numpy(), val.label.numpy().astype(int)
    recall_threshold = calibrate(probs, labels, cfg.target_recall, None)
    share_threshold = calibrate(probs, labels, None, cfg.target_share) if cfg.target_share else None
    threshold = share_threshold if share_threshold is not None else recall_threshold
    report = {
        "best_epoch": best_epoch, "history": history,
        "train": {"tokens": len(train), "divergent": int(n_pos)},
        "validation": metrics(probs, labels, threshold),
        "thresholds": {"recall": {"target": cfg.target_recall, "threshold": recall_threshold},
                       "share": None if share_threshold is None else
                       {"target": cfg.target_share, "threshold": share_threshold},
                       "default": threshold},
    }
    return net, report
