"""The token-level routed engine: an SLM and an LLM with one tokenizer (`serving.decoding.sequential` and
`serving.decoding.speculative` are its two kinds of pass)."""
from __future__ import annotations

from r2r.router.policies import RoutingPolicy
from r2r.serving.backends.base import LAST_ROW, Backend
from r2r.serving.decoding.engine import BlockConfig, Request, SteppedEngine, run_engine
from r2r.serving.decoding.generation import Generation, RoutingMode
from r2r.serving.decoding.sampling import SamplingParams, make_generator
from r2r.serving.decoding.sequential import sequential_step
from r2r.serving.decoding.speculative import speculative_step
from r2r.serving.decoding.stopping import StopRule


class RoutedEngine(SteppedEngine):
    """Active requests of one SLM/LLM pair, advanced together one step at a time."""

    def __init__(self, slm: Backend, llm: Backend, stop_rule: StopRule, block: BlockConfig | None = None) -> None:
        super().__init__(block)
        self.slm, self.llm, self.stop_rule = slm, llm, stop_rule

    def add(self, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
            modes: list[RoutingMode], keys: list[int]) -> list[Request]:
        """Prefill new requests (one batched SLM pass); they join the next step."""
        assert len(prompts) == len(params) == len(policies) == len(modes) == len(keys), "one of each per request"
        if not prompts:
            return []
        # what can fail on a request's fields comes before any sequence opens, so a fault leaves none behind
        watches = [self.stop_rule.watch(len(p), sp) for p, sp in zip(prompts, params)]
        generators = [make_generator(sp.seed) for sp in params]
        opened = self.slm.open(prompts, want_hidden=any(p.needs_hidden for p in policies),
                               rows_at=[LAST_ROW] * len(prompts))
        reqs = [Request(k, list(p), sp, pol, m, seq, out, watch, out=Generation(prompt_tokens=len(p)),
                        generator=gen, flag_rate=self.block.init_flag_rate, reject_rate=self.block.init_reject_rate)
                for p, sp, pol, m, k, (seq, out), watch, gen
                in zip(prompts, params, policies, modes, keys, opened, watches, generators)]
        for r in reqs:
            r.out.stats.slm_passes += 1
        self.active += reqs
        return reqs

    def _sequential_step(self, reqs: list[Request]) -> None:
        sequential_step(self, reqs)

    def _speculative_step(self, reqs: list[Request]) -> None:
        speculative_step(self, reqs)

    def _release(self, r: Request) -> None:
        self.slm.close(r.slm)
        if r.llm is not None:
            self.llm.close(r.llm)
        r.out.text = self.stop_rule.text_of(r.out.token_ids, r.params.stop)


def run_to_completion(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]],
                      params: list[SamplingParams], stop_rule: StopRule, mode: RoutingMode,
                      stream_keys: list[int] | None = None, block: BlockConfig | None = None) -> list[Generation]:
    """Decode a fixed batch of prompts to the end (the engine without a scheduler)."""
    assert len(prompts) == len(params), "one SamplingParams per prompt"
    return run_engine(RoutedEngine(slm, llm, stop_rule, block), prompts, params, [policy] * len(prompts), mode,
                      stream_keys)


def generate_sequential(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]],
                        params: list[SamplingParams], stop_rule: StopRule,
                        stream_keys: list[int] | None = None) -> list[Generation]:
    """Decode every prompt with sequential routing, batched across prompts."""
    return run_to_completion(slm, llm, policy, prompts, params, stop_rule, RoutingMode.SEQUENTIAL, stream_keys)


def generate_speculative(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]],
                         params: list[SamplingParams], stop_rule: StopRule, stream_keys: list[int] | None = None,
                         block: BlockConfig | None = None) -> list[Generation]:
    """Decode every prompt with speculative routing, batched across prompts; same output (greedy) or
    same distribution (sampling) as `generate_sequential`."""
    return run_to_completion(slm, llm, policy, prompts, params, stop_rule, RoutingMode.SPECULATIVE, stream_keys,
                             block)
