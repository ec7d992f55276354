"""`r2r bench decode`: per-token latency of SLM alone, LLM alone and routed decoding.

Every variant decodes the same prompts for exactly `new_tokens` tokens (EOS ignored) so
the per-token numbers are comparable; the ideal routed cost is slm + rate * llm (the SLM
runs on every token, the LLM only on routed ones). Routed decoding is measured in both modes:
sequential (an LLM pass at every step where some sequence is routed) and speculative (one
LLM pass per block).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from r2r.router.policies import AlwaysSLM, RandomPolicy, RoutingPolicy
from r2r.serving.backends.base import Backend
from r2r.serving.decoding.generation import Generation
from r2r.serving.pair import ModelPair
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import generate_sequential, generate_speculative
from r2r.serving.decoding import decode
from r2r.serving.decoding.stopping import StopRule


@dataclass(frozen=True)
class DecodeBenchConfig:
    batch_sizes: tuple[int, ...] = (1, 16)
    rates: tuple[float, ...] = (0.1, 0.2, 0.5)
    new_tokens: int = 64
    repeats: int = 3
    seed: int = 0


def _ms_per_token(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]], cfg: DecodeBenchConfig,
                  context: int, decode: Callable[..., list[Generation]] = generate_sequential) -> tuple[float, float]:
    """(median ms per decode step for the batch, mean LLM share) over cfg.repeats runs."""
    rule = StopRule(frozenset(), lambda ids: "", context)  # no EOS: every run decodes exactly new_tokens
    params = [SamplingParams(max_tokens=cfg.new_tokens)] * len(prompts)
    times, shares = [], []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        gens = decode(slm, llm, policy, prompts, params, rule)
        times.append((time.perf_counter() - start) / cfg.new_tokens * 1000)
        shares.append(sum(g.stats.llm_tokens for g in gens) / sum(len(g.token_ids) for g in gens))
    return statistics.median(times), statistics.mean(shares)


def _alone(model: Backend, _llm: Backend, _policy: RoutingPolicy, prompts: list[list[int]],
           params: list[SamplingParams], rule: StopRule) -> list[Generation]:
    """One model decoding alone, in `_ms_per_token`'s signature."""
    return decode(model, prompts, params, rule)


def bench_decode(pair: ModelPair, prompts: list[list[int]], cfg: DecodeBenchConfig) -> dict:
    """The decode benchmark JSON (see the module docstring); prompts are cycled to fill a batch."""
    result: dict = {"config": {"new_tokens": cfg.new_tokens, "repeats": cfg.repeats, "pair": pair.spec.name}}
    ctx = pair.context_length
    for batch in cfg.batch_sizes:
        batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
        slm_ms, _ = _ms_per_token(pair.slm, pair.slm, AlwaysSLM(), batch_prompts, cfg, ctx, _alone)
        llm_ms, _ = _ms_per_token(pair.llm, pair.llm, AlwaysSLM(), batch_prompts, cfg, ctx, _alone)
        entry: dict = {"slm_ms_per_token": round(slm_ms, 3), "llm_ms_per_token": round(llm_ms, 3), "rates": {}}
        for rate in cfg.rates:
            policy = RandomPolicy(rate=rate, seed=cfg.seed)
            routed_ms, share = _ms_per_token(pair.slm, pair.llm, policy, batch_prompts, cfg, ctx)
            spec_ms, _ = _ms_per_token(pair.slm, pair.llm, policy, batch_prompts, cfg, ctx, generate_speculative)
            ideal = slm_ms + rate * llm_ms
            entry["rates"][str(rate)] = {"routed_ms_per_token": round(routed_ms, 3),
                                         "ideal_ms_per_token": round(ideal, 3),
                                         "ideal_over_routed": round(ideal / routed_ms, 3),
                                         "speculative_ms_per_token": round(spec_ms, 3),
                                         "ideal_over_speculative": round(ideal / spec_ms, 3),
                                         "measured_llm_share": round(share, 3)}
        result[f"batch_{batch}"] = entry
    return result


@dataclass(frozen=True)
class SpeculativeBenchConfig:
    batch_sizes: tuple[int, ...] = (1, 16)
    shares: tuple[float, ...] = (0.1, 0.2, 0.4)
    n_prompts: int = 32
    max_tokens: int = 200
    repeats: int = 3  # sequential and speculative runs alternate; the median throughput of each is reported


def _run_mode(decode, pair: ModelPair, policy: RoutingPolicy, prompts: list[list[int]], batch: int,
              max_tokens: int) -> dict:
    params = [SamplingParams(max_tokens=max_tokens)] * len(prompts)
    rule = pair.stop_rule()
    gens = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        gens += decode(pair.slm, pair.llm, policy, prompts[i : i + batch], params[i : i + batch], rule,
                       stream_keys=list(range(i, i + batch)))
    seconds = time.perf_counter() - start
    tokens = sum(len(g.token_ids) for g in gens)
    return {"tokens_per_s": tokens / seconds, "llm_passes_per_token": sum(g.stats.llm_passes for g in gens) / tokens,
            "llm_share": sum(g.stats.llm_tokens for g in gens) / tokens,
            "mean_accepted_block": tokens / max(1, sum(g.stats.blocks for g in gens)),
            "token_ids": [g.token_ids for g in gens]}


def bench_speculative(pair: ModelPair, prompts: list[list[int]], cfg: SpeculativeBenchConfig) -> dict:
    """Sequential vs speculative routing with the learned router, at its calibrated threshold and at
    thresholds for several LLM shares; outputs are checked identical (greedy) while being timed."""
    router = pair.learned_policy()
    settings = {"calibrated": router} | {f"share_{s}": router.with_threshold(router.threshold_for_share(s))
                                         for s in cfg.shares}
    result: dict = {"config": {"n_prompts": len(prompts), "max_tokens": cfg.max_tokens, "pair": pair.spec.name,
                               "repeats": cfg.repeats, "calibrated_threshold": router.threshold}}
    for batch in cfg.batch_sizes:
        entry = {}
        for name, policy in settings.items():
            runs = [(_run_mode(generate_sequential, pair, policy, prompts, batch, cfg.max_tokens),
                     _run_mode(generate_speculative, pair, policy, prompts, batch, cfg.max_tokens))
                    for _ in range(cfg.repeats)]
            seq, spec = runs[0]
            seq_tps = statistics.median(a["tokens_per_s"] for a, _ in runs)
            spec_tps = statistics.median(b["tokens_per_s"] for _, b in runs)
            entry[name] = {
                "threshold": round(policy.threshold, 4), "llm_share": round(seq["llm_share"], 4),
                "sequential_tokens_per_s": round(seq_tps, 1),
                "speculative_tokens_per_s": round(spec_tps, 1),
                "speedup": round(spec_tps / seq_tps, 3),
                "sequential_llm_passes_per_token": round(seq["llm_passes_per_token"], 4),
                "speculative_llm_passes_per_token": round(spec["llm_passes_per_token"], 4),
                "mean_accepted_block": round(spec["mean_accepted_block"], 2),
                "identical_outputs": all(a["token_ids"] == b["token_ids"] == seq["token_ids"] for a, b in runs),
            }
        result[f"batch_{batch}"] = entry
    return result
