"""Speculative rounds, one implementation for both engines: block sizing, opening and joining a round,
riding along, and committing a verified block.

Glossary (terms of serving.decoding.speculative, plus)
  round        one speculative cycle: drafting passes, then one LLM verification of every flagged draft.
  block        a request's drafts in one round: up to its block size k, chosen when it enters the round.
  joining      a request that arrives while a round is in progress enters it at the next pass.
  riding       drafting on only while other requests of the round do: the pass runs anyway, so a rider's
               extra drafts cost a row each; it never makes the round longer.
  verdict      the LLM's judgement of a flagged draft: accepted, or rejected with the token (piece) it
               writes instead.

The round is the same whatever a draft is. The token-level engine drafts tokens from the SLM's rows and
judges a flagged one by the LLM's row at its position; the byte-level engine drafts pieces from the SLM's
covers and judges a flagged one by the LLM's piece distribution at that byte prefix. That difference is a
`Speculator`; this module does the rest: who drafts on, when the round ends, the order drafts are committed
in (every unflagged draft kept, the first rejected flag corrected and the rest of the block dropped), the
flag- and rejection-rate estimates block sizes come from, and each request's per-position random streams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, Protocol, TypeVar

import torch

from r2r.serving.decoding.generation import Generation
from r2r.serving.decoding.pass_costs import PassCosts
from r2r.serving.decoding.sampling import position_generator

DRAFT, VERIFY = 0, 1  # random streams per output position (RoundRequest.generator_at)


class DraftCalls(str, Enum):
    """How a speculative round's greedy drafts reach the SLM."""

    BACKEND = "backend"  # as the SLM backend declares (`Backend.drafts_in_one_call`)
    PER_TOKEN = "per_token"  # one SLM pass per drafted position; the router can end a block at a flag
    PER_BLOCK = "per_block"  # the whole block in one `Backend.draft` call, routed after it (SGLang: one engine call)


@dataclass(frozen=True)
class BlockConfig:
    """Bounds and rate estimates for speculative block sizes (`block_size`): per request, flag and rejection
    rates as exponential moving averages; k within [k_min, k_max]."""

    k_min: int = 2
    k_max: int = 16
    ema: float = 0.2  # weight of the newest block in the rate estimates
    init_flag_rate: float = 0.1
    init_reject_rate: float = 0.5
    draft_calls: DraftCalls = DraftCalls.BACKEND

    def __post_init__(self) -> None:
        object.__setattr__(self, "draft_calls", DraftCalls(self.draft_calls))
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")


class Drafted(Protocol):
    """A drafted position as the round reads it: whether the router flagged it."""

    flagged: bool


D = TypeVar("D", bound=Drafted)


@dataclass(kw_only=True, eq=False)
class RoundRequest(Generic[D]):
    """What both engines' requests hold for speculative rounds (each engine's request extends it): the output,
    the request's randomness, its flag and rejection rates, and its block in the round in progress."""

    out: Generation
    generator: torch.Generator  # the request's own randomness (seeded by its seed)
    flag_rate: float  # flagged drafts per draft (EMA over blocks)
    reject_rate: float  # rejected flags per verified flag (EMA)
    done: bool = False
    drafts: list[D] = field(default_factory=list)  # the block in progress
    block: int = 0  # block size in the round in progress (0: not in one)
    riding: bool = False  # drafting on only while others do
    _seed_base: int | None = None

    def generator_at(self, position: int, stream: int) -> torch.Generator:
        """The generator of one random choice (`DRAFT` or `VERIFY`) at one output position. Block boundaries
        follow measured pass times, so each position draws from its own generator (from the request's seed)
        and a seed reproduces the output whatever the blocks were."""
        if self._seed_base is None:
            self._seed_base = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return position_generator(self._seed_base, position, stream)


R = TypeVar("R", bound=RoundRequest)


class Judge(Protocol[R, D]):
    """Commits the blocks of one verified round, a draft at a time, in order (`end_round` calls it)."""

    def keep(self, r: R, d: D) -> None:
        """Write an unflagged draft as drafted: the SLM's token (piece)."""

    def settle(self, r: R, d: D) -> bool:
        """Write the LLM's token (piece) at a flagged draft, from the verdict: the draft itself when accepted,
        else the correction (the models' states follow it). True when the draft was rejected."""

    def drop(self, r: R, dropped: list[D]) -> None:
        """The drafts after the last one written (past a rejection or a stop): free what they hold."""


class Speculator(Protocol[R, D]):
    """How one engine drafts and how it has flagged drafts judged: everything a round does not share."""

    def draft(self, reqs: list[R]) -> list[bool]:
        """One drafted position for each request, routed, appended to its `drafts` (one batched SLM pass).
        Per request: whether it may draft another (False at a stop, or when nothing was appended)."""

    def verify(self, reqs: list[R]) -> Judge[R, D]:
        """One LLM pass over the flagged drafts of `reqs` (none: no call); returns the judge of their blocks."""


class RoundContext(Protocol):
    """What a round reads and keeps on its engine: block sizing, pass costs, and who drafts on in the round in
    progress (None between rounds)."""

    block: BlockConfig
    costs: PassCosts
    drafting: list | None


class BlockRates(Protocol):
    """A request's flag and rejection rates (exponential moving averages), as block sizing reads them."""

    flag_rate: float
    reject_rate: float


def block_size(r: BlockRates, cfg: BlockConfig, costs: PassCosts, batch: int) -> int:
    """The block length k that maximizes this request's expected tokens per second of a round.

    A block of k drafts commits min(k, J) tokens, J the position of the first rejected flag
    (geometric in flag rate * rejection rate); a round of k steps costs k drafting steps and one
    LLM pass's fixed part (its per-token part is in the step cost). Until both are measured:
    k ~ the expected run to a rejection."""
    p = max(1e-3, r.flag_rate * r.reject_rate)
    if not costs.known:
        return max(cfg.k_min, min(cfg.k_max, math.ceil(1.0 / p)))
    step, fixed = costs.step(batch), costs.llm.fixed
    return max(range(cfg.k_min, cfg.k_max + 1), key=lambda k: (1.0 - (1.0 - p) ** k) / (k * step + fixed))


def past_flag(r: BlockRates, k_left: int, costs: PassCosts, batch: int) -> bool:
    """Draft on past a flagged draft (verified later, with the next flag, in one LLM pass), or end the block?

    Going on pays when the flag is accepted and another flag comes within the block: one LLM
    pass's fixed cost saved. It costs the drafting steps past the flag when the flag is rejected:
    about the run to the next flag. Until costs are measured: stop (as sequential routing would)."""
    if not costs.known:
        return False
    f = max(r.flag_rate, 1e-3)
    another_flag = 1.0 - (1.0 - f) ** k_left
    wasted = min(k_left, 1.0 / f)
    return (1.0 - r.reject_rate) * another_flag * costs.llm.fixed > r.reject_rate * wasted * costs.step(batch)


def round_step(ctx: RoundContext, reqs: list[R], speculator: Speculator[R, D]) -> None:
    """One drafting pass of the round in progress (a round opens with every request), and when no request
    drafts on, the round's end: one verification, the blocks committed.

    A round lasts as long as its longest block. Requests that join mid-round (continuous batching) ride
    along from the next pass: they draft while the round lasts, up to their own block size, and are
    verified with it, instead of waiting for the round to end (at concurrency 32 a round is ~14 passes,
    a request's whole life ~5 rounds)."""
    joining = ctx.drafting is not None
    drafting = ctx.drafting if joining else []
    for r in reqs:
        if not r.block:  # opening the round, or joining it
            r.block = block_size(r, ctx.block, ctx.costs, len(reqs))
            r.riding = joining
            drafting.append(r)
    with ctx.costs.timing("draft", len(drafting)):
        ctx.drafting = _draft_pass(ctx, drafting, speculator, len(reqs))
    if ctx.drafting:
        return
    ctx.drafting = None
    end_round(ctx.block, reqs, speculator)


def _draft_pass(ctx: RoundContext, drafting: list[R], speculator: Speculator[R, D], batch: int) -> list[R]:
    """One drafted position for each drafting request; returns those that draft on.

    A request drafts up to its block size, or to a flag it should not draft past. The round lasts while
    some request wants to draft on. Requests that would stop at a flag ride along (up to their block size)
    meanwhile: their extra drafts are kept whenever their flags are accepted. `batch`: requests in the
    round (joiners included), for the block sizer's costs."""
    wanting, rides = [], []
    for r, more in zip(drafting, speculator.draft(drafting)):
        k_left = r.block - len(r.drafts)
        if not more or k_left <= 0:
            continue
        if not r.riding and (not r.drafts[-1].flagged or past_flag(r, k_left, ctx.costs, batch)):
            wanting.append(r)
        else:
            r.riding = True
            rides.append(r)
    return wanting + rides if wanting else []


def end_round(cfg: BlockConfig, reqs: list[R], speculator: Speculator[R, D]) -> None:
    """Verify every request's block in one LLM pass and commit it: unflagged drafts kept, flagged ones as
    judged, up to the first rejection or stop (the rest dropped); update the rate estimates; close the round."""
    judge = speculator.verify(reqs)
    for r in reqs:
        n_flags = sum(d.flagged for d in r.drafts)
        written = 0
        for d in r.drafts:
            written += 1
            if d.flagged:
                rejected = judge.settle(r, d)
                r.reject_rate += cfg.ema * (float(rejected) - r.reject_rate)  # per verified flag
                if rejected:
                    break
            else:
                judge.keep(r, d)
            if r.done:
                break
        judge.drop(r, r.drafts[written:])
        if r.drafts:
            r.flag_rate += cfg.ema * (n_flags / len(r.drafts) - r.flag_rate)
    for r in reqs:
        r.drafts, r.block, r.riding = [], 0, False
        r.out.stats.blocks += 1
