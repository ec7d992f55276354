"""Measured pass costs of a pair, and the throughput bounds they imply for routed decoding.

Glossary
  SLM step       one batched SLM extend of one token per row, hidden states included (the router needs them).
  router         scoring one SLM output row per request, as the engine does it (`route_rows`).
  LLM step       one batched LLM extend of one token per row: what the LLM alone pays per token.
  catch-up pass  one batched LLM extend of several tokens per row. A pass costs about
                 fixed + per_token * tokens fed; the two probes (1 and `catchup_tokens` per row) fit both.
  draft run      `draft_run` SLM steps, each followed by the router, back to back: how drafting runs between
                 LLM passes. The SLM step and router probes above each follow an LLM pass (they are
                 interleaved with the LLM probes), so they pay for caches the LLM's weights evicted; the run
                 is what a step costs within a block.
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

from r2r.router.policies import RoutingPolicy
from r2r.serving.backends.base import LAST_ROW, Backend
from r2r.serving.backends.hf import cache_kwarg
from r2r.serving.decoding.engine import route_rows


@dataclass(frozen=True)
class ProbeConfig:
    repeats: int = 30  # the LLM rows grow by 1 + catchup_tokens per repeat
    catchup_tokens: int = 8
    draft_run: int = 8  # SLM steps + router back to back in the draft-run probe

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.catchup_tokens < 2 or self.draft_run < 1:
            raise ValueError(f"need repeats >= 1, catchup_tokens >= 2 and draft_run >= 1, got {self.repeats}, "
                             f"{self.catchup_tokens}, {self.draft_run}")


def _interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each function, called in turn `repeats` times (after one warm call each): drift on this
    machine hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def probe_costs(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]], cfg: ProbeConfig,
                bare_slm: torch.nn.Module | None = None) -> dict[str, float]:
    """ms of each kind of pass for len(prompts) rows (sequences opened here and closed after), interleaved;
    with `bare_slm` (batch 1 only) the same SLM called directly through transformers too."""
    b, m = len(prompts), cfg.catchup_tokens
    assert bare_slm is None or b == 1, "the bare forward is measured at batch 1"
    slm_seqs = [s for s, _ in slm.open(prompts, want_hidden=True)]
    llm_seqs = [s for s, _ in llm.open(prompts)]
    last: list = []

    def slm_step() -> None:
        last[:] = slm.extend(slm_seqs, [[p[-1]] for p in prompts], want_hidden=True)

    def router() -> None:
        route_rows([policy] * b, [o.logits[-1] for o in last], [o.hidden[-1] for o in last],
                   [s.length for s in slm_seqs], list(range(b)), [o.kind for o in last])

    in_run: dict[str, list[float]] = {"slm_step_in_run_ms": [], "router_in_run_ms": []}

    def draft_run() -> None:
        for _ in range(cfg.draft_run):
            for name, fn in (("slm_step_in_run_ms", slm_step), ("router_in_run_ms", router)):
                start = time.perf_counter()
                fn()
                in_run[name].append(time.perf_counter() - start)

    fns = {"slm_step_ms": slm_step, "router_ms": router, "draft_run_ms": draft_run,
           "llm_step_ms": lambda: llm.extend(llm_seqs, [[p[-1]] for p in prompts]),
           # a catch-up reads one row, the last (the engine asks for no more: `rows_at`)
           f"llm_catchup_{m}_ms": lambda: llm.extend(llm_seqs, [[p[-1]] * m for p in prompts],
                                                      rows_at=[LAST_ROW] * len(prompts))}
    if bare_slm is not None:
        fns["slm_bare_forward_ms"] = _bare_forward(bare_slm, prompts[0])
    try:
        costs = _interleaved_ms(fns, cfg.repeats)
    finally:
        for s in slm_seqs:
            slm.close(s)
        for s in llm_seqs:
            llm.close(s)
    per_token = max(0.0, (costs[f"llm_catchup_{m}_ms"] - costs["llm_step_ms"]) / (b * (m - 1)))
    del costs["draft_run_ms"]  # its steps, timed one by one; the first run is the warm-up call, left out as above
    costs |= {name: statistics.median(t[cfg.draft_run:]) * 1e3 for name, t in in_run.items()}
    return costs | {"llm_pass_fixed_ms": max(0.0, costs["llm_step_ms"] - b * per_token),
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


def _bare_forward(model: torch.nn.Module, prompt: list[int]) -> Callable[[], None]:
    """A batch-1 decode step of a transformers model called directly with a plain `DynamicCache`."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache_arg = {cache_kwarg(model): DynamicCache()}
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt], device=device), use_cache=True, **cache_arg)
    step = torch.tensor([[prompt[-1]]], device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=step, use_cache=True, **cache_arg)

    return forward
