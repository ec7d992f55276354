"""Routing policies: which positions the LLM writes instead of the SLM.

Every policy maps the SLM's view of the position being decided to a score in [0, 1]
(higher = more in need of the LLM) and flags the position when the score exceeds its
threshold. Decisions depend only on the prefix (the SLM's outputs at that position and
the position itself), never on what happens later; that is what lets speculative routing
reproduce sequential routing exactly.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch

from r2r.router.rows import RowKind, row_logprobs


class PolicyKind(str, Enum):
    SLM = "slm"
    LLM = "llm"
    RANDOM = "random"
    CONFIDENCE = "confidence"
    ENTROPY = "entropy"
    LEARNED = "learned"


@dataclass
class RouteInput:
    """The SLM's outputs at the positions being decided, one row per sequence."""

    logits: torch.Tensor  # [batch, vocab] float32 SLM rows for the next token: logits or top-k log-probs (`kind`)
    hidden: torch.Tensor | None  # [batch, hidden] last-layer post-norm hidden states, if the policy needs them
    positions: list[int]  # index (in the full token sequence) of the token being decided
    stream_keys: list[int]  # a per-request key; seeded policies derive their decisions from (seed, key, position)
    kind: RowKind  # what the rows hold (the backend's StepOutput says)

    def __post_init__(self) -> None:
        assert self.logits.dim() == 2, f"logits must be [batch, vocab], got {tuple(self.logits.shape)}"
        assert len(self.positions) == len(self.stream_keys) == self.logits.shape[0], "batch size mismatch"


class RoutingPolicy(Protocol):
    kind: PolicyKind
    needs_hidden: bool
    threshold: float

    def scores(self, inputs: RouteInput) -> torch.Tensor:
        """[batch] scores in [0, 1]; higher means the LLM should write this token."""
        ...


def flags(policy: RoutingPolicy, inputs: RouteInput) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [batch], flags [batch] bool): a position is routed to the LLM when score > threshold."""
    scores = policy.scores(inputs)
    assert scores.shape == (inputs.logits.shape[0],), f"scores shape {tuple(scores.shape)}"
    return scores, scores > policy.threshold


@dataclass
class AlwaysSLM:
    kind: PolicyKind = PolicyKind.SLM
    needs_hidden: bool = False
    threshold: float = 0.5

    def scores(self, inputs: RouteInput) -> torch.Tensor:
        return torch.zeros(inputs.logits.shape[0])


@dataclass
class AlwaysLLM:
    kind: PolicyKind = PolicyKind.LLM
    needs_hidden: bool = False
    threshold: float = 0.5

    def scores(self, inputs: RouteInput) -> torch.Tensor:
        return torch.ones(inputs.logits.shape[0])


@dataclass
class RandomPolicy:
    """Routes each position with probability `rate`, as a pure function of (seed, request, position).

    The score is a uniform draw u; flagged when u > 1 - rate, i.e. threshold = 1 - rate.
    """

    rate: float
    seed: int = 0
    kind: PolicyKind = PolicyKind.RANDOM
    needs_hidden: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"random routing rate must be in [0, 1], got {self.rate}")

    @property
    def threshold(self) -> float:
        return 1.0 - self.rate

    def scores(self, inputs: RouteInput) -> torch.Tensor:
        out = []
        for key, pos in zip(inputs.stream_keys, inputs.positions):
            digest = hashlib.blake2b(f"{self.seed}:{key}:{pos}".encode(), digest_size=8).digest()
            out.append(int.from_bytes(digest, "little") / 2**64)
        return torch.tensor(out, dtype=torch.float64).float()


@dataclass
class ConfidencePolicy:
    """Routes when the SLM is unsure: score = 1 - max probability (`confidence`) or
    entropy / log(vocab) (`entropy`), both in [0, 1], computed at temperature 1.

    Top-k log-prob rows are read as they are (`router.rows`). Their entropy is that of the returned
    mass, -sum p log p over the returned entries with the tail ignored: a lower bound on the full
    distribution's entropy, equal to it when the tail holds no mass; still divided by log(vocab), so a
    threshold means the same on either kind of row."""

    threshold: float
    kind: PolicyKind = PolicyKind.CONFIDENCE
    needs_hidden: bool = False

    def __post_init__(self) -> None:
        if self.kind not in (PolicyKind.CONFIDENCE, PolicyKind.ENTROPY):
            raise ValueError(f"ConfidencePolicy kind must be confidence or entropy, got {self.kind}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"{self.kind.value} threshold must be in [0, 1], got {self.threshold}")

    def scores(self, inputs: RouteInput) -> torch.Tensor:
        logp = row_logprobs(inputs.logits, inputs.kind)  # [batch, vocab]
        if self.kind == PolicyKind.CONFIDENCE:
            return 1.0 - logp.max(dim=-1).values.exp()
        entropy = -(logp.exp() * logp).nan_to_num().sum(dim=-1)  # -inf entries: 0 * -inf = nan -> 0
        return (entropy / math.log(inputs.logits.shape[-1])).clamp(0.0, 1.0)


def make_policy(kind: PolicyKind | str, threshold: float | None = None, rate: float | None = None,
                seed: int = 0) -> RoutingPolicy:
    """Build a non-learned policy from CLI/API fields (the learned router is loaded by router.checkpoint)."""
    kind = PolicyKind(kind)
    if kind == PolicyKind.SLM:
        return AlwaysSLM()
    if kind == PolicyKind.LLM:
        return AlwaysLLM()
    if kind == PolicyKind.RANDOM:
        if rate is None:
            raise ValueError("the random policy needs an LLM rate (--rate / llm_share)")
        return RandomPolicy(rate=rate, seed=seed)
    if kind in (PolicyKind.CONFIDENCE, PolicyKind.ENTROPY):
        if threshold is None:
            raise ValueError(f"the {kind.value} policy needs a threshold in [0, 1]")
        return ConfidencePolicy(threshold=threshold, kind=kind)
    raise ValueError(f"policy {kind.value!r} needs a trained router checkpoint")
