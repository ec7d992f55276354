"""The routed decoding engine: live requests stepped together, requests joining and leaving between steps.

Both routing modes run on the same request state; one `step` is one batched SLM pass: a token
for each sequential request, a draft for each speculative one (and the LLM's verification
when the speculative round ends), with the SLM and LLM passes batched across requests.
`generate_*` drive it to completion for a fixed batch; the server's scheduler adds and
cancels requests between steps (continuous batching), so a request joins a round in progress.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from router.policies import RouteInput, RoutingPolicy, flags
from serving.backends.base import Backend, SequenceHandle, StepOutput
from serving.decoding.generation import Generation, RoutingMode
from serving.decoding.pass_costs import PassCosts
from serving.decoding.sampling import SamplingParams, make_generator, position_generator
from serving.decoding.stopping import StopRule


@dataclass(frozen=True)
class BlockConfig:
    """Bounds and rate estimates for speculative block sizes (`serving.decoding.speculative.block_size`): per
    request, flag and rejection rates as exponential moving averages; k within [k_min, k_max]."""

    k_min: int = 2
    k_max: int = 16
    ema: float = 0.2  # weight of the newest block in the rate estimates
    init_flag_rate: float = 0.1
    init_reject_rate: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")


@dataclass
class Draft:
    token: int
    flagged: bool
    score: float
    q: torch.Tensor | None  # [vocab] the SLM's processed distribution (sampling only)


@dataclass
class Request:
    """Decoding state of one request."""

    key: int  # stream key: seeded policies derive decisions from (seed, key, position)
    prompt: list[int]
    params: SamplingParams
    policy: RoutingPolicy
    mode: RoutingMode
    generator: torch.Generator
    slm: SequenceHandle
    slm_out: StepOutput  # SLM outputs at the last position it holds
    out: Generation
    flag_rate: float = 0.1
    reject_rate: float = 0.5
    llm: SequenceHandle | None = None
    llm_seen: int = 0  # tokens of prompt + output the LLM holds in its KV
    drafts: list[Draft] = field(default_factory=list)
    block: int = 0  # block size in the speculative round in progress (0: not in one)
    riding: bool = False  # drafting on only while others do (serving.decoding.speculative._draft_step)
    done: bool = False
    _seed_base: int | None = None

    def generator_at(self, position: int, stream: int) -> torch.Generator:
        """For speculative sampling: block boundaries follow measured pass times, so each position
        draws from its own generator (from the request's seed) and a seed still reproduces."""
        return position_generator(self.seed_base, position, stream)

    @property
    def seed_base(self) -> int:
        if self._seed_base is None:
            self._seed_base = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return self._seed_base

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out.token_ids


def route(reqs: list[Request], positions: list[int]) -> tuple[list[float], list[bool]]:
    """Router scores and flags at each request's current SLM outputs, grouped by policy."""
    return route_rows([r.policy for r in reqs], [r.slm_out.logits[-1] for r in reqs],
                      [r.slm_out.hidden[-1] if r.slm_out.hidden is not None else None for r in reqs],
                      positions, [r.key for r in reqs])


def route_rows(policies: list[RoutingPolicy], logits: list[torch.Tensor], hidden: list[torch.Tensor | None],
               positions: list[int], keys: list[int]) -> tuple[list[float], list[bool]]:
    """Scores and flags for one SLM output row per request; requests sharing a policy are scored together."""
    scores, flagged = [0.0] * len(policies), [False] * len(policies)
    groups: dict[int, list[int]] = {}
    for i, policy in enumerate(policies):
        groups.setdefault(id(policy), []).append(i)
    for idx in groups.values():
        policy = policies[idx[0]]
        route_in = RouteInput(logits=torch.stack([logits[i] for i in idx]),
                              hidden=torch.stack([hidden[i] for i in idx]) if policy.needs_hidden else None,
                              positions=[positions[i] for i in idx], stream_keys=[keys[i] for i in idx])
        s, f = flags(policy, route_in)
        for i, si, fi in zip(idx, s.tolist(), f.tolist()):
            scores[i], flagged[i] = si, fi
    return scores, flagged


def slm_feed(slm: Backend, reqs: list[Request], tokens: list[int]) -> None:
    """Append one token per request to the SLM in one batched pass."""
    if not reqs:
        return
    hidden = any(r.policy.needs_hidden for r in reqs)
    for r, o in zip(reqs, slm.extend([r.slm for r in reqs], [[t] for t in tokens], want_hidden=hidden)):
        r.slm_out = o
        r.out.stats.slm_passes += 1


def llm_feed(llm: Backend, reqs: list[Request], feeds: list[list[int]]) -> list[StepOutput]:
    """Give each request's LLM sequence its feed (opening it on first use); batched, one pass per kind."""
    outs: dict[int, StepOutput] = {}
    fresh = [i for i, r in enumerate(reqs) if r.llm is None]
    if fresh:
        for i, (seq, out) in zip(fresh, llm.open([feeds[i] for i in fresh])):
            reqs[i].llm, outs[i] = seq, out
    behind = [i for i in range(len(reqs)) if i not in outs]
    if behind:
        for i, out in zip(behind, llm.extend([reqs[i].llm for i in behind], [feeds[i] for i in behind])):
            outs[i] = out
    for r, feed in zip(reqs, feeds):
        r.llm_seen += len(feed)
        r.out.stats.llm_passes += 1
    return [outs[i] for i in range(len(reqs))]


class Engine(Protocol):
    """What the scheduler drives: `RoutedEngine` (one tokenizer) or `CrossEngine` (bytes)."""

    active: list

    def add(self, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
            modes: list[RoutingMode], keys: list[int]) -> list: ...

    def step(self) -> list: ...

    def cancel(self, req) -> None: ...


class RoutedEngine:
    """Active requests of one SLM/LLM pair, advanced together one step at a time."""

    def __init__(self, slm: Backend, llm: Backend, stop_rule: StopRule, block: BlockConfig | None = None) -> None:
        self.slm, self.llm, self.stop_rule = slm, llm, stop_rule
        self.block = block or BlockConfig()
        self.costs = PassCosts()
        self.active: list[Request] = []
        self.drafting: list[Request] | None = None  # a speculative round in progress: who drafts on

    def add(self, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
            modes: list[RoutingMode], keys: list[int]) -> list[Request]:
        """Prefill new requests (one batched SLM pass); they join the next step."""
        assert len(prompts) == len(params) == len(policies) == len(modes) == len(keys), "one of each per request"
        if not prompts:
            return []
        opened = self.slm.open(prompts, want_hidden=any(p.needs_hidden for p in policies))
        reqs = [Request(k, list(p), sp, pol, m, make_generator(sp.seed), seq, out, Generation(prompt_tokens=len(p)),
                        self.block.init_flag_rate, self.block.init_reject_rate)
                for p, sp, pol, m, k, (seq, out) in zip(prompts, params, policies, modes, keys, opened)]
        for r in reqs:
            r.out.stats.slm_passes += 1
        self.active += reqs
        return reqs

    def step(self) -> list[Request]:
        """Advance every active request by one SLM pass: a token (sequential) or a draft, the round's
        verification at its end (speculative). Returns the requests that finished (their memory freed)."""
        from serving.decoding.sequential import sequential_step
        from serving.decoding.speculative import speculative_step

        start = time.perf_counter()
        seq = [r for r in self.active if r.mode == RoutingMode.SEQUENTIAL]
        spec = [r for r in self.active if r.mode == RoutingMode.SPECULATIVE]
        if seq:
            sequential_step(self, seq)
        if spec:
            speculative_step(self, spec)
        elapsed = time.perf_counter() - start
        finished = [r for r in self.active if r.done]
        for r in self.active:
            r.out.stats.seconds += elapsed
        for r in finished:
            self._release(r)
        self.active = [r for r in self.active if not r.done]
        return finished

    def cancel(self, req: Request) -> None:
        """Drop a request now (a client went away); its KV is freed."""
        if req in self.active:
            self.active.remove(req)
            if self.drafting is not None and req in self.drafting:
                self.drafting.remove(req)
            self._release(req)

    def _release(self, r: Request) -> None:
        self.slm.close(r.slm)
        if r.llm is not None:
            self.llm.close(r.llm)
        r.out.text = self.stop_rule.text_of(r.out.token_ids, r.params.stop)


def run_engine(engine: Engine, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
               mode: RoutingMode, stream_keys: list[int] | None = None) -> list[Generation]:
    """Drive any engine (token-level or cross-tokenizer) over a fixed batch until every request ends."""
    keys = stream_keys if stream_keys is not None else list(range(len(prompts)))
    return drain(engine, engine.add(prompts, params, policies, [mode] * len(prompts), keys))


def drain(engine: Engine, reqs: list) -> list[Generation]:
    """Step `engine` until nothing is active; each request's seconds = the wall time of the batch."""
    start = time.perf_counter()
    while engine.active:
        engine.step()
    elapsed = time.perf_counter() - start
    for r in reqs:
        r.out.stats.seconds = elapsed
    return [r.out for r in reqs]


def run_to_completion(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]],
                      params: list[SamplingParams], stop_rule: StopRule, mode: RoutingMode,
                      stream_keys: list[int] | None = None, block: BlockConfig | None = None) -> list[Generation]:
    """Decode a fixed batch of prompts to the end (the engine without a scheduler)."""
    assert len(prompts) == len(params), "one SamplingParams per prompt"
    return run_engine(RoutedEngine(slm, llm, stop_rule, block), prompts, params, [policy] * len(prompts), mode,
                      stream_keys)
