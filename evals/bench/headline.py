"""`r2r bench headline`: routed decoding against what a user would pick instead, in one run.

Configurations (greedy; each family's held-out test problems; static batches of 1, 8, 32):
  llm_alone              the LLM as the only model (`serving.decoding.decode`): no SLM pass, no router.
  slm_alone              the SLM as the only model.
  lossless_speculative   the SLM drafts, the LLM verifies every drafted position (the `llm` policy in
                         speculative mode): the LLM's own output, blocks sized by the engine's cost model.
  routed_sequential      the learned router at the pair's default operating point, sequential routing.
  routed_speculative     the same router, speculative routing (same output as sequential).

Configurations interleave: problems go in chunks, every configuration runs each chunk before the next
chunk starts, in an order that rotates, so this machine's drift (+-15% between runs) hits all alike. Each
configuration keeps one engine for the whole run (its measured pass costs carry over between chunks) and
is warmed up on problems outside the measured set first.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from r2r.evals.bench.split_bound import TokenSplit, split_meta
from r2r.evals.bench.step_costs import ProbeConfig, probe_costs, routed_bounds
from r2r.evals.report import wilson
from r2r.testbed.problem import Problem, grade
from r2r.router.policies import AlwaysLLM, RoutingPolicy
from r2r.serving.backends.base import Backend
from r2r.serving.decoding.engine import BlockConfig, run_engine
from r2r.serving.decoding.routed import RoutedEngine
from r2r.serving.decoding.generation import Generation, RoutingMode, Source
from r2r.serving.decoding import decode
from r2r.serving.pair import ModelPair
from r2r.serving.decoding.sampling import SamplingParams

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 200  # the testbed evaluation's generation limit


class Config(str, Enum):
    LLM_ALONE = "llm_alone"
    SLM_ALONE = "slm_alone"
    LOSSLESS_SPECULATIVE = "lossless_speculative"
    ROUTED_SEQUENTIAL = "routed_sequential"
    ROUTED_SPECULATIVE = "routed_speculative"


@dataclass(frozen=True)
class HeadlineConfig:
    n_problems: int = 200
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    chunk: int = 8  # problems per interleaved chunk (at least one batch)
    warmup_problems: int = 2
    max_tokens: int = MAX_NEW_TOKENS
    probe: ProbeConfig = ProbeConfig()

    def __post_init__(self) -> None:
        if self.n_problems < 1:
            raise ValueError(f"--n must be at least 1, got {self.n_problems}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {list(self.batch_sizes)}")
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if self.chunk < 1 or self.warmup_problems < 1:
            raise ValueError(f"chunk and warmup_problems must be positive, got {self.chunk}, {self.warmup_problems}")


@dataclass
class _Run:
    """One configuration: how it decodes a batch (prompts, stream keys), and what it has produced so far."""

    batch_decode: Callable[[list[list[int]], list[int]], list[Generation]]
    gens: list[Generation]
    seconds: float = 0.0


def _runs(pair: ModelPair, routed: RoutingPolicy, params: SamplingParams) -> dict[Config, _Run]:
    rule = pair.stop_rule()

    def alone(backend: Backend, role: Source) -> _Run:
        return _Run(lambda prompts, keys: decode(backend, prompts, [params] * len(prompts), rule, role), [])

    def paired(policy: RoutingPolicy, mode: RoutingMode) -> _Run:
        engine = RoutedEngine(pair.slm, pair.llm, rule)  # one per configuration: its pass costs carry over
        return _Run(lambda prompts, keys: run_engine(engine, prompts, [params] * len(prompts),
                                                     [policy] * len(prompts), mode, keys), [])

    return {Config.LLM_ALONE: alone(pair.llm, Source.LLM), Config.SLM_ALONE: alone(pair.slm, Source.SLM),
            Config.LOSSLESS_SPECULATIVE: paired(AlwaysLLM(), RoutingMode.SPECULATIVE),
            Config.ROUTED_SEQUENTIAL: paired(routed, RoutingMode.SEQUENTIAL),
            Config.ROUTED_SPECULATIVE: paired(routed, RoutingMode.SPECULATIVE)}


def _decode(run: _Run, prompts: list[list[int]], batch: int, key0: int) -> list[Generation]:
    out: list[Generation] = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        out += run.batch_decode(chunk, list(range(key0 + i, key0 + i + len(chunk))))
    return out


def _summary(name: Config, run: _Run, problems: list[Problem]) -> dict:
    tokens = sum(len(g.token_ids) for g in run.gens)
    correct = sum(grade(p, g.text) for p, g in zip(problems, run.gens))
    llm_tokens, llm_passes = sum(g.stats.llm_tokens for g in run.gens), sum(g.stats.llm_passes for g in run.gens)
    return {"accuracy": correct / len(problems), "ci95": list(wilson(correct, len(problems))),
            "tokens_per_s": tokens / run.seconds, "output_tokens": tokens, "seconds": run.seconds,
            "llm_share": llm_tokens / tokens, "llm_passes_per_token": llm_passes / tokens}


def bench_family(pair: ModelPair, routed: RoutingPolicy, problems: list[Problem], warmup: list[Problem],
                 batch: int, cfg: HeadlineConfig, encode: Callable[[Problem], list[int]]) -> dict:
    """Every configuration on `problems` at one batch size, interleaved by chunks (module docstring)."""
    runs = _runs(pair, routed, SamplingParams(max_tokens=cfg.max_tokens))
    prompts = [encode(p) for p in problems]
    for run in runs.values():  # warm-up: outside the measured problems and time
        _decode(run, [encode(p) for p in warmup], batch, key0=10**6)
    chunk = max(cfg.chunk, batch)
    order = list(runs)
    for n, start in enumerate(range(0, len(prompts), chunk)):
        rotated = order[n % len(order):] + order[: n % len(order)]
        for name in rotated:
            run = runs[name]
            t0 = time.perf_counter()
            run.gens += _decode(run, prompts[start : start + chunk], batch, key0=start)
            run.seconds += time.perf_counter() - t0
    result: dict = {}
    for name, run in runs.items():
        result[name.value] = _summary(name, run, problems)
    ids = {name: [g.token_ids for g in run.gens] for name, run in runs.items()}
    result[Config.LOSSLESS_SPECULATIVE.value]["identical_to_llm_alone"] = (
        ids[Config.LOSSLESS_SPECULATIVE] == ids[Config.LLM_ALONE])
    result[Config.ROUTED_SPECULATIVE.value]["identical_to_sequential"] = (
        ids[Config.ROUTED_SPECULATIVE] == ids[Config.ROUTED_SEQUENTIAL])
    return result


def bench_headline(pair: ModelPair, routed: RoutingPolicy, families: dict[str, tuple[list[Problem], list[Problem]]],
                   cfg: HeadlineConfig, encode: Callable[[Problem], list[int]],
                   progress: Callable[[str], None] | None = None, splits: dict[str, TokenSplit] | None = None) -> dict:
    """The headline JSON: {family: {batch_B: {config: {...}}}, "meta": {...}}. `families` maps a family to
    (measured problems, warm-up problems). Pass costs are probed right after each family and batch size is
    measured, so the bounds read against a measurement come from the same stretch of this machine's drift.
    `splits`: each family's token split in the pair's off-policy labels, for `meta.split` and its bound on
    routed over lossless speculative decoding (`evals.bench.split_bound`)."""
    result: dict = {}
    probes: dict[str, dict[str, dict[str, float]]] = {}
    for family, (problems, warmup) in families.items():
        result[family], probes[family] = {}, {}
        prompts = [encode(p) for p in problems]
        for batch in cfg.batch_sizes:
            if progress:
                progress(f"{family} batch {batch}")
            result[family][f"batch_{batch}"] = bench_family(pair, routed, problems, warmup, batch, cfg, encode)
            probes[family][f"batch_{batch}"] = _probe(pair, routed, prompts, batch, cfg)
    result["meta"] = _meta(pair, routed, result, probes, cfg)
    one = result["meta"]["pass_costs"].get("batch_1")
    if splits and one is not None:
        draft_ms = one["slm_step_ms"] + one["router_ms"]
        result["meta"]["split"] = {
            f: split_meta(splits[f], result[f]["batch_1"][Config.ROUTED_SPECULATIVE.value]["llm_share"], draft_ms,
                          one["llm_step_ms"], BlockConfig().k_max) | {
                "measured_routed_over_lossless": result[f]["batch_1"][Config.ROUTED_SPECULATIVE.value]["tokens_per_s"]
                / result[f]["batch_1"][Config.LOSSLESS_SPECULATIVE.value]["tokens_per_s"]}
            for f in splits if f in result}
    return result


def _probe(pair: ModelPair, routed: RoutingPolicy, prompts: list[list[int]], batch: int,
           cfg: HeadlineConfig) -> dict[str, float]:
    from r2r.serving.backends.hf import HFBackend

    rows = [prompts[i % len(prompts)] for i in range(batch)]
    bare = pair.slm.model if batch == 1 and isinstance(pair.slm, HFBackend) else None
    return probe_costs(pair.slm, pair.llm, routed, rows, cfg.probe, bare)


def _meta(pair: ModelPair, routed: RoutingPolicy, result: dict, probes: dict[str, dict[str, dict[str, float]]],
          cfg: HeadlineConfig) -> dict:
    """Pass costs per batch size (the mean of the families' probes; each family's own under
    `pass_costs_by_family`), the bounds each family's probe implies for its routed configurations' measured
    shares, and the batch-1 step-overhead figures."""
    meta: dict = {"pair": pair.spec.name, "n_problems": cfg.n_problems, "max_tokens": cfg.max_tokens,
                  "routed_policy": routed.kind.value, "routed_threshold": routed.threshold,
                  "batch_sizes": list(cfg.batch_sizes), "pass_costs": {}, "pass_costs_by_family": probes,
                  "bounds": {}}
    families = [f for f in result if f != "meta"]
    for batch in cfg.batch_sizes:
        key = f"batch_{batch}"
        runs = [probes[f][key] for f in families]
        meta["pass_costs"][key] = {name: sum(run[name] for run in runs) / len(runs) for name in runs[0]}
        bounds = {}
        for family in families:
            entry, costs = result[family][key], probes[family][key]
            for name, mode in ((Config.ROUTED_SEQUENTIAL, "sequential"), (Config.ROUTED_SPECULATIVE, "speculative"),
                               (Config.LOSSLESS_SPECULATIVE, "speculative")):
                measured = entry[name.value]
                bound = routed_bounds(costs, batch, measured["llm_share"])
                ratio = measured["tokens_per_s"] / entry[Config.LLM_ALONE.value]["tokens_per_s"]
                bounds[f"{family}/{name.value}"] = {
                    "bound_tokens_per_s": bound[f"{mode}_tokens_per_s"],
                    "bound_over_llm_alone": bound[f"{mode}_over_llm_alone"],
                    "measured_over_llm_alone": ratio,
                    "measured_over_bound": measured["tokens_per_s"] / bound[f"{mode}_tokens_per_s"]}
        meta["bounds"][key] = bounds
    one = meta["pass_costs"].get("batch_1")
    if one is not None:
        draft = one["slm_step_ms"] + one["router_ms"]
        step = {"slm_step_plus_router_ms": draft, "router_over_slm_step": one["router_ms"] / one["slm_step_ms"],
                "llm_step_over_slm_step_plus_router": one["llm_step_ms"] / draft,
                "in_run": {"slm_step_ms": one["slm_step_in_run_ms"], "router_ms": one["router_in_run_ms"],
                           "router_over_slm_step": one["router_in_run_ms"] / one["slm_step_in_run_ms"]}}
        if "slm_bare_forward_ms" in one:
            step |= {"slm_bare_forward_ms": one["slm_bare_forward_ms"],
                     "slm_step_plus_router_over_bare": draft / one["slm_bare_forward_ms"],
                     "in_run_over_bare": (one["slm_step_in_run_ms"] + one["router_in_run_ms"])
                     / one["slm_bare_forward_ms"]}
        meta["step_overhead_batch_1"] = step
    return meta
