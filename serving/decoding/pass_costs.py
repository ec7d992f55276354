"""Measured pass costs, for speculative decisions that trade SLM passes for LLM passes.

Wall time, not FLOPs: what a pass costs depends on the device, the batch and the lengths fed,
and the trade-offs (how long a block runs, whether to draft past a flag) only need the ratio
of what this engine actually pays for each kind of work.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class PassCost:
    """seconds ~ fixed + per_token * tokens for one kind of batched work, fitted on exponentially
    weighted moments of what this engine ran (recent batch sizes and lengths dominate)."""

    ema: float = 0.1
    n: int = 0
    x: float = 0.0  # tokens (rows) in the batch
    y: float = 0.0  # seconds
    xx: float = 0.0
    xy: float = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        w = 1.0 if self.n == 0 else self.ema
        self.x += w * (tokens - self.x)
        self.y += w * (seconds - self.y)
        self.xx += w * (tokens * tokens - self.xx)
        self.xy += w * (tokens * seconds - self.xy)
        self.n += 1

    @property
    def _var(self) -> float:
        """Weighted variance of the sizes seen (0 while every pass had the same size)."""
        return self.xx - self.x * self.x

    @property
    def fitted(self) -> bool:
        """Seen more than one size: the fixed and per-token parts can be told apart."""
        return self._var > 1e-6

    @property
    def per_token(self) -> float:
        if not self.fitted:
            return 0.0
        return min(self.y / max(self.x, 1e-9), max(0.0, (self.xy - self.x * self.y) / self._var))

    @property
    def fixed(self) -> float:
        """The part that does not grow with the tokens (all of it until batch sizes vary)."""
        return max(0.0, self.y - self.per_token * self.x)

    def seconds(self, tokens: float) -> float:
        return self.fixed + self.per_token * tokens


@dataclass
class PassCosts:
    """Measured costs of speculative rounds: a drafting step (route + SLM pass, per row) and an LLM
    verification pass (per token fed), for choosing how long blocks run."""

    draft: PassCost = field(default_factory=PassCost)
    llm: PassCost = field(default_factory=PassCost)

    @contextmanager
    def timing(self, kind: str, tokens: int) -> Iterator[None]:
        """Time the block as one `kind` step over `tokens` rows or tokens (0: nothing ran, no sample)."""
        start = time.perf_counter()
        yield
        if tokens:
            getattr(self, kind).observe(tokens, time.perf_counter() - start)

    @property
    def known(self) -> bool:
        """Measured well enough to trade passes. The LLM's fixed part is what drafting past a flag
        saves, so it must be fitted, not taken as the whole of one pass (a request's first LLM pass
        is its prompt's prefill, many times a verification pass: read as fixed cost, it made
        rounds draft past flags that were then rejected)."""
        return self.draft.n > 0 and self.llm.fitted

    def step(self, batch: int) -> float:
        """Seconds one drafting step of `batch` requests costs, its drafts' share of LLM tokens included."""
        return self.draft.seconds(batch) + self.llm.per_token * batch
