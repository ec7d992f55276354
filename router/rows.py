"""What a row of next-token scores holds, and its log-probabilities.

A backend returns, for each position asked for, a [vocab] float32 row of one of two kinds:

  LOGITS          full-vocabulary logits (up to a constant shift): log_softmax gives the log-probabilities.
  TOPK_LOGPROBS   the log-probabilities of the `returned_top_k` most likely tokens, normalised over the whole
                  vocabulary by the engine, and -inf elsewhere (SGLang returns these). They already are
                  log-probabilities: used as they are. Their mass is below 1 wherever the tail is not empty, so a
                  log_softmax would renormalise it to 1 and shift every entry by -log(top-k mass).

The enum lives here, at the bottom of DESIGN.md's import table, so that the router can read it; the backend
contract (`serving.backends.base`) re-exports it.
"""
from __future__ import annotations

from enum import Enum

import torch


class RowKind(str, Enum):
    LOGITS = "logits"
    TOPK_LOGPROBS = "topk_logprobs"


def row_logprobs(rows: torch.Tensor, kind: RowKind) -> torch.Tensor:
    """rows [batch, vocab] -> log-probabilities [batch, vocab] float32: log_softmax of logits; top-k log-prob rows
    as they are (-inf outside the returned entries), never renormalised."""
    assert rows.dim() == 2, f"rows must be [batch, vocab], got {tuple(rows.shape)}"
    if kind == RowKind.LOGITS:
        return torch.log_softmax(rows.float(), dim=-1)
    assert kind == RowKind.TOPK_LOGPROBS, f"unknown row kind {kind!r}"
    return rows.float()
