"""The routed decoding engine: live requests stepped together, requests joining and leaving between steps.

Both routing modes run on the same request state; `SteppedEngine` is the step both engines share
(`serving.decoding.routed` for one tokenizer, `serving.byte_level.cross_tokenizer` for two).
`run_engine` drives one to completion for a fixed batch; the server's scheduler adds and cancels
requests between steps (continuous batching), so a request joins a round in progress.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from r2r.router.policies import RouteInput, RoutingPolicy, flags
from r2r.serving.backends.base import Backend, Positions, RowKind, SequenceHandle, StepOutput
from r2r.serving.decoding.generation import Generation, RoutingMode
from r2r.serving.decoding.pass_costs import PassCosts
from r2r.serving.decoding.rounds import BlockConfig, RoundContext, RoundRequest
from r2r.serving.decoding.rounds import DraftCalls  # noqa: F401 (re-exported: callers name it beside BlockConfig)
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.stopping import StopRule, TokenStops


@dataclass
class Draft:
    token: int
    flagged: bool
    score: float
    q: torch.Tensor | None  # [vocab] the SLM's processed distribution (sampling only)


@dataclass(eq=False)
class Request(RoundRequest[Draft]):
    """Decoding state of one request (its output, randomness and speculative round: `RoundRequest`)."""

    key: int  # stream key: seeded policies derive decisions from (seed, key, position)
    prompt: list[int]
    params: SamplingParams
    policy: RoutingPolicy
    mode: RoutingMode
    slm: SequenceHandle
    slm_out: StepOutput  # SLM outputs at the last position it holds
    stops: TokenStops  # the stop rule over this request's output, checked incrementally
    llm: SequenceHandle | None = None
    llm_seen: int = 0  # tokens of prompt + output the LLM holds in its KV

    @property
    def length(self) -> int:
        """Tokens of prompt + output (O(1): the per-token loop never copies the sequence to count it)."""
        return len(self.prompt) + len(self.out.token_ids)

    def tokens_from(self, start: int) -> list[int]:
        """prompt + output from position `start` on, copying only those: what a model that holds `start`
        tokens is fed to catch up (O(tokens returned), not O(sequence))."""
        n = len(self.prompt)
        if start >= n:
            return self.out.token_ids[start - n:]
        return self.prompt[start:] + self.out.token_ids

    def last_token(self) -> int:
        """The last token of prompt + output."""
        return self.out.token_ids[-1] if self.out.token_ids else self.prompt[-1]


def route(reqs: list[Request], positions: list[int]) -> tuple[list[float], list[bool]]:
    """Router scores and flags at each request's current SLM outputs, grouped by policy."""
    return route_rows([r.policy for r in reqs], [r.slm_out.logits[-1] for r in reqs],
                      [r.slm_out.hidden[-1] if r.slm_out.hidden is not None else None for r in reqs],
                      positions, [r.key for r in reqs], [r.slm_out.kind for r in reqs])


def route_rows(policies: list[RoutingPolicy], logits: list[torch.Tensor], hidden: list[torch.Tensor | None],
               positions: list[int], keys: list[int], kinds: list[RowKind]) -> tuple[list[float], list[bool]]:
    """Scores and flags for one SLM output row (of kind kinds[i]) per request; requests sharing a policy (and a
    row kind) are scored together."""
    scores, flagged = [0.0] * len(policies), [False] * len(policies)
    groups: dict[tuple[int, RowKind], list[int]] = {}
    for i, policy in enumerate(policies):
        groups.setdefault((id(policy), kinds[i]), []).append(i)
    for (_, kind), idx in groups.items():
        policy = policies[idx[0]]
        route_in = RouteInput(logits=torch.stack([logits[i] for i in idx]),
                              hidden=torch.stack([hidden[i] for i in idx]) if policy.needs_hidden else None,
                              positions=[positions[i] for i in idx], stream_keys=[keys[i] for i in idx], kind=kind)
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


def llm_feed(llm: Backend, reqs: list[Request], feeds: list[list[int]], rows_at: list[Positions]) -> list[StepOutput]:
    """Give each request's LLM sequence its feed (opening it on first use); batched, one pass per kind. Each gets
    its rows at rows_at[i] (positions in its feed) only."""
    outs: dict[int, StepOutput] = {}
    fresh = [i for i, r in enumerate(reqs) if r.llm is None]
    if fresh:
        for i, (seq, out) in zip(fresh, llm.open([feeds[i] for i in fresh], rows_at=[rows_at[i] for i in fresh])):
            reqs[i].llm, outs[i] = seq, out
    behind = [i for i in range(len(reqs)) if i not in outs]
    if behind:
        for i, out in zip(behind, llm.extend([reqs[i].llm for i in behind], [feeds[i] for i in behind],
                                             rows_at=[rows_at[i] for i in behind])):
            outs[i] = out
    for r, feed in zip(reqs, feeds):
        r.llm_seen += len(feed)
        r.out.stats.llm_passes += 1
    return [outs[i] for i in range(len(reqs))]


class Pending(Protocol):
    """A request in an engine, as the shared step and the scheduler read it: `Request` (token level) or the
    byte-level engine's `CrossRequest`."""

    mode: RoutingMode
    done: bool
    out: Generation


class Engine(Protocol):
    """What the scheduler drives: `RoutedEngine` (one tokenizer) or `CrossEngine` (bytes)."""

    active: list[Pending]

    def add(self, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
            modes: list[RoutingMode], keys: list[int]) -> list[Pending]: ...

    def step(self) -> list[Pending]: ...

    def cancel(self, req: Pending) -> None: ...


class StepContext(RoundContext, Protocol):
    """What a routed step (`sequential_step`, `speculative_step`) reads, and the round state it keeps: the two
    models, the stop rule, and (`RoundContext`) block sizing, pass costs and the speculative round in progress.
    The token-level engine is one; the steps take this instead of the engine, so they need not import it."""

    slm: Backend
    llm: Backend
    stop_rule: StopRule


class SteppedEngine:
    """The step, cancel and round bookkeeping shared by the token-level engine (`serving.decoding.routed`)
    and the byte-level one (`serving.byte_level.cross_tokenizer`).

    One `step` is one batched SLM pass: a token or piece for each sequential request, a draft for each
    speculative one, and when no request of the speculative round in progress drafts on, the round's LLM
    verification. Requests join between steps (continuous batching), a speculative one joining a round in
    progress rides along in it. Block sizes come from `BlockConfig` and the pass costs measured here.
    Subclasses implement the two kinds of pass and `_release` (free a finished request's sequences)."""

    def __init__(self, block: BlockConfig | None = None) -> None:
        self.block = block or BlockConfig()
        self.costs = PassCosts()
        self.active: list[Pending] = []
        self.drafting: list[Pending] | None = None  # a speculative round in progress: who drafts on

    def step(self) -> list[Pending]:
        """Advance every active request by one SLM pass; returns the requests that finished (memory freed)."""
        start = time.perf_counter()
        seq = [r for r in self.active if r.mode == RoutingMode.SEQUENTIAL]
        spec = [r for r in self.active if r.mode == RoutingMode.SPECULATIVE]
        if seq:
            self._sequential_step(seq)
        if spec:
            self._speculative_step(spec)
        elapsed = time.perf_counter() - start
        finished = [r for r in self.active if r.done]
        for r in self.active:
            r.out.stats.seconds += elapsed
        for r in finished:
            self._release(r)
        self.active = [r for r in self.active if not r.done]
        return finished

    def cancel(self, req: Pending) -> None:
        """Drop a request now (a client went away); its sequences are freed."""
        if req in self.active:
            self.active.remove(req)
            if self.drafting is not None and req in self.drafting:
                self.drafting.remove(req)
            self._release(req)

    def _sequential_step(self, reqs: list) -> None:
        raise NotImplementedError

    def _speculative_step(self, reqs: list) -> None:
        raise NotImplementedError

    def _release(self, r) -> None:
        raise NotImplementedError


def run_engine(engine: Engine, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
               mode: RoutingMode, stream_keys: list[int] | None = None) -> list[Generation]:
    """Drive any engine (token-level or cross-tokenizer) over a fixed batch until every request ends."""
    keys = stream_keys if stream_keys is not None else list(range(len(prompts)))
    return drain(engine, engine.add(prompts, params, policies, [mode] * len(prompts), keys))


def drain(engine: Engine, reqs: list[Pending]) -> list[Generation]:
    """Step `engine` until nothing is active; each request's seconds = the wall time of the batch."""
    start = time.perf_counter()
    while engine.active:
        engine.step()
    elapsed = time.perf_counter() - start
    for r in reqs:
        r.out.stats.seconds = elapsed
    return [r.out for r in reqs]
