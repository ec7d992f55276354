"""Router features from SLM outputs at one position.

  hidden     the SLM's last-layer post-norm hidden state            [batch, hidden]
  token      the id of the SLM's top token (embedded by the router with the SLM's own, frozen,
             input embeddings, so the table is never stored in a router checkpoint)
  topk       the top-k next-token log-probabilities, sorted descending [batch, k]

Log-probabilities rather than raw logits: any backend that returns top-k log-probs (SGLang
does) can feed the router, and they are invariant to a constant shift of the logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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


def topk_logprobs(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits [batch, vocab] -> sorted top-k log-probabilities [batch, k] (float32)."""
    assert logits.dim() == 2, f"logits must be [batch, vocab], got {tuple(logits.shape)}"
    return torch.topk(torch.log_softmax(logits.float(), dim=-1), k, dim=-1).values


def features_from_outputs(logits: torch.Tensor, hidden: torch.Tensor, k: int) -> RouterFeatures:
    """Features at each row of SLM outputs (logits [batch, vocab], hidden [batch, hidden])."""
    assert logits.shape[0] == hidden.shape[0], "one hidden row per logits row"
    return RouterFeatures(hidden=hidden.float(), token=logits.argmax(dim=-1), topk=topk_logprobs(logits, k))
