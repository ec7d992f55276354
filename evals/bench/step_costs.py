"""Measured pass costs of a pair, and the throughput bounds they imply for routed decoding.

Glossary
  SLM step       one batched SLM extend of one token per row, hidden states included (the router needs them).
  router         scoring one SLM output row per request, as the engine does it (`route_rows`).
  LLM step       one batched LLM extend of one token per row: what the LLM alone pays per token.
  catch-up pass  one batched LLM extend of several tokens per row. A pass costs about
                 fixed + per_token * tokens fed; the two probes (1 and `catchup_tokens` per row) fit both.
  bare forward   the same model called directly through transformers with a plain `DynamicCache`, batch 1:
                 what the backend's own bookkeeping is measured against.

Bounds (tokens/s, b rows, LLM share s; engine overheads left out, so measured throughput can only be lower):
  sequential   a step makes b tokens with one SLM step and the router; the LLM is needed with
               probability p = 1 - (1 - s)^b and then catches up every routed row, so over a run it
               processes every token once: b / (slm + router + p * fixed + b * per_token).
  speculative  one LLM pass per round: its fixed part spread over the round (left out), so
               b / (slm + router + b * per_token).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from router.policies import RoutingPolicy
from serving.backends.base import Backend
from serving.engine import route_rows


@dataclass(frozen=True)
class ProbeConfig:
    repeats: int = 15
    catchup_tokens: int = 8

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.catchup_tokens < 2:
            raise ValueError(f"need repeats >= 1 and catchup_tokens >= 2, got {self.repeats}, {self.catchup_tokens}")


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def probe_costs(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]],
                cfg: ProbeConfig) -> dict[str, float]:
    """ms of each kind of pass for len(prompts) rows (sequences opened here and closed after)."""
    b = len(prompts)
    slm_seqs = [s for s, _ in slm.open(prompts, want_hidden=True)]
    llm_seqs = [s for s, _ in llm.open(prompts)]
    last: list = []

    def slm_step() -> None:
        last[:] = slm.extend(slm_seqs, [[p[-1]] for p in prompts], want_hidden=True)

    def router() -> None:
        route_rows([policy] * b, [o.logits[-1] for o in last], [o.hidden[-1] for o in last],
                   [s.length for s in slm_seqs], list(range(b)))

    try:
        slm_ms = _median_ms(slm_step, cfg.repeats)
        router_ms = _median_ms(router, cfg.repeats)
        llm_ms = _median_ms(lambda: llm.extend(llm_seqs, [[p[-1]] for p in prompts]), cfg.repeats)
        m = cfg.catchup_tokens
        catchup_ms = _median_ms(lambda: llm.extend(llm_seqs, [[p[-1]] * m for p in prompts]), cfg.repeats)
    finally:
        for s in slm_seqs:
            slm.close(s)
        for s in llm_seqs:
            llm.close(s)
    per_token = max(0.0, (catchup_ms - llm_ms) / (b * (m - 1)))
    return {"slm_step_ms": slm_ms, "router_ms": router_ms, "llm_step_ms": llm_ms,
            f"llm_catchup_{m}_ms": catchup_ms, "llm_pass_fixed_ms": max(0.0, llm_ms - b * per_token),
            "llm_catchup_ms_per_token": per_token}


def routed_bounds(costs: dict[str, float], batch: int, share: float) -> dict[str, float]:
    """Upper bounds on routed tokens/s at this batch and LLM share (module docstring), and their ratio to the
    LLM alone (batch / llm_step)."""
    assert 0.0 <= share <= 1.0, f"share {share} outside [0, 1]"
    draft_ms = costs["slm_step_ms"] + costs["router_ms"]
    p_pass = 1.0 - (1.0 - share) ** batch
    sequential_ms = draft_ms + p_pass * costs["llm_pass_fixed_ms"] + batch * costs["llm_catchup_ms_per_token"]
    speculative_ms = draft_ms + batch * costs["llm_catchup_ms_per_token"]
    alone = batch / costs["llm_step_ms"] * 1e3
    seq, spec = batch / sequential_ms * 1e3, batch / speculative_ms * 1e3
    return {"sequential_tokens_per_s": seq, "speculative_tokens_per_s": spec,
            "sequential_over_llm_alone": seq / alone, "speculative_over_llm_alone": spec / alone}


def bare_forward_ms(model: torch.nn.Module, prompt: list[int], repeats: int) -> float:
    """Batch-1 decode step of a transformers model called directly with a plain `DynamicCache`."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=torch.tensor([prompt], device=device), past_key_values=cache, use_cache=True)
        step = torch.tensor([[prompt[-1]]], device=device)

        def forward() -> None:
            model(input_ids=step, past_key_values=cache, use_cache=True)

        return _median_ms(forward, repeats)
