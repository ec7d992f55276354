"""`r2r bench decode`: per-token latency of SLM alone, LLM alone and routed decoding.

Every variant decodes the same prompts for exactly `new_tokens` tokens (EOS ignored) so
the per-token numbers are comparable; the ideal routed cost is slm + rate * llm (the SLM
runs on every token, the LLM only on routed ones).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from router.policies import AlwaysSLM, RandomPolicy, RoutingPolicy
from serving.backends.base import Backend
from serving.pair import ModelPair
from serving.sampling import SamplingParams
from serving.sequential import StopRule, generate_sequential


@dataclass(frozen=True)
class DecodeBenchConfig:
    batch_sizes: tuple[int, ...] = (1, 16)
    rates: tuple[float, ...] = (0.1, 0.2, 0.5)
    new_tokens: int = 64
    repeats: int = 3
    seed: int = 0


def _ms_per_token(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]], cfg: DecodeBenchConfig,
                  context: int) -> tuple[float, float]:
    """(median ms per decode step for the batch, mean LLM share) over cfg.repeats runs."""
    rule = StopRule(frozenset(), lambda ids: "", context)  # no EOS: every run decodes exactly new_tokens
    params = [SamplingParams(max_tokens=cfg.new_tokens)] * len(prompts)
    times, shares = [], []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        gens = generate_sequential(slm, llm, policy, prompts, params, rule)
        times.append((time.perf_counter() - start) / cfg.new_tokens * 1000)
        shares.append(sum(g.stats.llm_tokens for g in gens) / sum(len(g.token_ids) for g in gens))
    return statistics.median(times), statistics.mean(shares)


def bench_decode(pair: ModelPair, prompts: list[list[int]], cfg: DecodeBenchConfig) -> dict:
    """The decode benchmark JSON (see the module docstring); prompts are cycled to fill a batch."""
    result: dict = {"config": {"new_tokens": cfg.new_tokens, "repeats": cfg.repeats, "pair": pair.spec.name}}
    ctx = pair.context_length
    for batch in cfg.batch_sizes:
        batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
        slm_ms, _ = _ms_per_token(pair.slm, pair.slm, AlwaysSLM(), batch_prompts, cfg, ctx)
        llm_ms, _ = _ms_per_token(pair.llm, pair.llm, AlwaysSLM(), batch_prompts, cfg, ctx)
        entry: dict = {"slm_ms_per_token": round(slm_ms, 3), "llm_ms_per_token": round(llm_ms, 3), "rates": {}}
        for rate in cfg.rates:
            routed_ms, share = _ms_per_token(pair.slm, pair.llm, RandomPolicy(rate=rate, seed=cfg.seed),
                                             batch_prompts, cfg, ctx)
            ideal = slm_ms + rate * llm_ms
            entry["rates"][str(rate)] = {"routed_ms_per_token": round(routed_ms, 3),
                                         "ideal_ms_per_token": round(ideal, 3),
                                         "ideal_over_routed": round(ideal / routed_ms, 3),
                                         "measured_llm_share": round(share, 3)}
        result[f"batch_{batch}"] = entry
    return result
