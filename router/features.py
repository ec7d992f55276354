"""Router features from SLM outputs at one position.

  hidden     the SLM's last-layer post-norm hidden state            [batch, hidden]
  token      the id of the SLM's top token (embedded by the router with the SLM's own, frozen,
             input embeddings, so the table is never stored in a router checkpoint)
  topk       the top-k next-token log-probabilities, sorted descending [batch, k]

Log-probabilities rather than raw logits: any backend that returns top-k log-probs (SGLang
does) can feed the router, and they are invariant to a constant shift of the logits. A row's kind
(`router.rows.RowKind`) says which it is; top-k log-prob rows are read as they are, so the features
from them equal those from the full row of the same distribution (for k <= the returned top-k).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from r2r.router.rows import RowKind, row_logprobs


@dataclass
class RouterFeatures:
    hidden: torch.Tensor  # [batch, hidden] float32
    token: torch.Tensor  # [batch] int64, the SLM's argmax token
    topk: torch.Tensor  # [batch, k] float32 log-probs, descending

    def __post_init__(self) -> None:
        n = self.hidden.shape[0]
        assert self.hidden.dim() == 2 and self.token.shape == (n,) and self.topk.shape[0] == n, (
            f"feature shapes disagree: hidden {tuple(self.hidden.shape)}, token {tuple(self.token.shape)}, "
            f"topk {tuple(self.topk.shape)}")


def topk_logprobs(logits: torch.Tensor, k: int, kind: RowKind) -> torch.Tensor:
    """rows [batch, vocab] of `kind` -> sorted top-k log-probabilities [batch, k] (float32)."""
    assert logits.dim() == 2, f"logits must be [batch, vocab], got {tuple(logits.shape)}"
    top = torch.topk(row_logprobs(logits, kind), k, dim=-1).values  # [batch, k]
    assert kind == RowKind.LOGITS or bool(torch.isfinite(top[:, -1]).all()), (
        f"top-{k} features from rows holding fewer than {k} log-probs")
    return top


def features_from_outputs(logits: torch.Tensor, hidden: torch.Tensor, k: int, kind: RowKind) -> RouterFeatures:
    """Features at each row of SLM outputs (rows [batch, vocab] of `kind`, hidden [batch, hidden])."""
    assert logits.shape[0] == hidden.shape[0], "one hidden row per logits row"
    return RouterFeatures(hidden=hidden.float(), token=logits.argmax(dim=-1), topk=topk_logprobs(logits, k, kind))
