"""Sampling parameters and token choice from a distribution (greedy, temperature, top-k, top-p)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings, validated on construction (bad values are user errors)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    logprobs: int | None = None  # record each token's log-prob and this many top alternatives (sequential mode)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be in 0..20, got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def processed_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a request samples from: softmax(logits / T) cut to top-k and top-p, renormalized.

    logits: [..., vocab]; returns probabilities of the same shape. Not defined for greedy.
    """
    assert not params.greedy, "processed_probs is for sampling; greedy takes the argmax"
    scaled = logits.float() / params.temperature
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= params.top_p, 0.0)  # keep the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from logits [vocab]: argmax when greedy, else a draw from processed_probs."""
    assert logits.dim() == 1, f"logits must be [vocab], got {tuple(logits.shape)}"
    if params.greedy:
        return int(torch.argmax(logits))
    return int(torch.multinomial(processed_probs(logits, params), 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    """A per-request generator: seeded when the request has a seed, else from fresh entropy."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def position_generator(base: int, position: int, stream: int) -> torch.Generator:
    """A generator for one random choice (`stream`) at one output position, seeded from the request's
    `base`: the numbers a position draws do not depend on how decoding was split into blocks."""
    x = (base ^ (position * 0x9E3779B97F4A7C15) ^ (stream * 0xBF58476D1CE4E5B9)) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)  # splitmix64 finalizer
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return torch.Generator().manual_seed((x ^ (x >> 31)) & (2**63 - 1))
