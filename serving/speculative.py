"""Speculative routing: the SLM drafts a block, the LLM verifies only the flagged subset in one pass.

Glossary (terms of serving.sequential, plus)
  block        up to k tokens the SLM drafts in a row; the router scores each as it is drafted.
  flagged      a drafted position whose router score exceeds the threshold. Under sequential
               routing the LLM would write that token.
  accepted     a drafted token kept. Unflagged drafts are always accepted; a flagged draft is
               accepted when the LLM agrees (greedy: same argmax; sampling: with prob min(1, p/q)).
  corrected    the first flagged draft the LLM rejects is replaced by the LLM's token (greedy: its
               argmax; sampling: a draw from norm(max(p - q, 0))) and the rest of the block dropped.
  catch-up     tokens committed since the LLM's last pass, fed in front of the drafts.

Why this is exact. Router decisions depend only on the prefix, so a committed prefix sees the
same flags as under sequential routing. Unflagged positions get the SLM's token in both modes.
At a flagged position sequential routing takes the LLM's token; here the SLM's draft is kept
only when it is that token (greedy), or with the speculative-sampling rule whose marginal is
exactly the LLM's distribution p (sampling). Each LLM pass settles at least one flagged
position of the final output, so it never needs more LLM passes than sequential routing.
A block with no flag never calls the LLM.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from router.policies import RouteInput, RoutingPolicy, flags
from serving.backends.base import Backend, SequenceHandle, StepOutput
from serving.generation import Generation, Source
from serving.sampling import SamplingParams, make_generator, processed_probs
from serving.sequential import StopRule


@dataclass(frozen=True)
class BlockConfig:
    """Adaptive block size: k ~ the expected run until a rejection, 1 / (flag rate * rejection rate)."""

    k_min: int = 2
    k_max: int = 16
    ema: float = 0.2  # weight of the newest block in the rate estimates
    init_flag_rate: float = 0.1
    init_reject_rate: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")


@dataclass
class _Draft:
    token: int
    flagged: bool
    score: float
    q: torch.Tensor | None  # [vocab] the SLM's processed distribution (sampling only)


@dataclass
class _Live:
    index: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    slm: SequenceHandle
    slm_out: StepOutput  # SLM outputs at the last position it holds
    out: Generation
    flag_rate: float
    reject_rate: float
    llm: SequenceHandle | None = None
    llm_seen: int = 0
    drafts: list[_Draft] = field(default_factory=list)
    drafting: bool = True
    done: bool = False

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out.token_ids

    def block_size(self, cfg: BlockConfig) -> int:
        run = 1.0 / max(1e-3, self.flag_rate * self.reject_rate)
        return max(cfg.k_min, min(cfg.k_max, math.ceil(run)))


def generate_speculative(
    slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]], params: list[SamplingParams],
    stop_rule: StopRule, stream_keys: list[int] | None = None, block: BlockConfig | None = None,
) -> list[Generation]:
    """Decode every prompt with speculative routing, batched across prompts; same output (greedy) or
    same distribution (sampling) as serving.sequential.generate_sequential."""
    assert len(prompts) == len(params), "one SamplingParams per prompt"
    if not prompts:
        return []
    cfg = block or BlockConfig()
    keys = stream_keys if stream_keys is not None else list(range(len(prompts)))
    start = time.perf_counter()
    opened = slm.open(prompts, want_hidden=policy.needs_hidden)
    lives = [_Live(i, list(p), sp, make_generator(sp.seed), seq, out, Generation(prompt_tokens=len(p)),
                   cfg.init_flag_rate, cfg.init_reject_rate)
             for i, (p, sp, (seq, out)) in enumerate(zip(prompts, params, opened))]
    for lv in lives:
        lv.out.stats.slm_passes += 1
    active = lives
    while active:
        _draft_block(slm, policy, active, keys, stop_rule, cfg)
        corrected = _verify(slm, llm, active, stop_rule, cfg)
        if corrected:  # the SLM has not seen the corrected tokens: one batched pass for all of them
            outs = slm.extend([lv.slm for lv in corrected], [[lv.out.token_ids[-1]] for lv in corrected],
                              want_hidden=policy.needs_hidden)
            for lv, o in zip(corrected, outs):
                lv.slm_out = o
                lv.out.stats.slm_passes += 1
        for lv in active:
            lv.drafts, lv.drafting = [], True
            lv.out.stats.blocks += 1
        active = [lv for lv in active if not lv.done]
    elapsed = time.perf_counter() - start
    for lv in lives:
        slm.close(lv.slm)
        if lv.llm is not None:
            llm.close(lv.llm)
        lv.out.text = stop_rule.text_of(lv.out.token_ids, lv.params.stop)
        lv.out.stats.seconds = elapsed
    return [lv.out for lv in lives]


def _draft_block(slm: Backend, policy: RoutingPolicy, active: list[_Live], keys: list[int], rule: StopRule,
                 cfg: BlockConfig) -> None:
    """Each request drafts up to its block size; one batched SLM pass per drafted position."""
    sizes = {lv.index: lv.block_size(cfg) for lv in active}
    drafting = list(active)
    while drafting:
        route_in = RouteInput(
            logits=torch.stack([lv.slm_out.logits[-1] for lv in drafting]),
            hidden=torch.stack([lv.slm_out.hidden[-1] for lv in drafting]) if policy.needs_hidden else None,
            positions=[len(lv.tokens) + len(lv.drafts) for lv in drafting],
            stream_keys=[keys[lv.index] for lv in drafting],
        )
        scores, flagged = flags(policy, route_in)
        for lv, score, f in zip(drafting, scores.tolist(), flagged.tolist()):
            logits = lv.slm_out.logits[-1]
            if lv.params.greedy:
                token, q = int(torch.argmax(logits)), None
            else:
                q = processed_probs(logits, lv.params)
                token = int(torch.multinomial(q, 1, generator=lv.generator))
            lv.drafts.append(_Draft(token, bool(f), float(score), q))
            ended = rule.check_tokens(lv.prompt, lv.out.token_ids + [d.token for d in lv.drafts], lv.params)
            lv.drafting = ended is None and len(lv.drafts) < sizes[lv.index]
        # every draft goes into the SLM: accepted ones need their KV and the next position's outputs
        outs = slm.extend([lv.slm for lv in drafting], [[lv.drafts[-1].token] for lv in drafting],
                          want_hidden=policy.needs_hidden)
        for lv, o in zip(drafting, outs):
            lv.slm_out = o
            lv.out.stats.slm_passes += 1
        drafting = [lv for lv in drafting if lv.drafting]


def _verify(slm: Backend, llm: Backend, active: list[_Live], rule: StopRule, cfg: BlockConfig) -> list[_Live]:
    """One LLM pass over every request with a flagged draft; commit accepted drafts and corrections.

    Returns the live requests whose block ended in a correction: the SLM has not seen that token.
    """
    rows = _llm_logits(llm, [lv for lv in active if any(d.flagged for d in lv.drafts)])
    corrected: list[_Live] = []
    for lv in active:
        committed_before = len(lv.out.token_ids)
        n_flags = sum(d.flagged for d in lv.drafts)
        rejected = False
        for j, d in enumerate(lv.drafts):
            token = d.token
            if d.flagged:
                correction = _accept_or_correct(d, rows[lv.index][j], lv.params, lv.generator)
                if correction is not None:
                    token, rejected = correction, True
            lv.out.token_ids.append(token)
            lv.out.sources.append(Source.LLM if d.flagged else Source.SLM)
            lv.out.scores.append(d.score)
            lv.out.stats.llm_tokens += int(d.flagged)
            reason = rule.check_tokens(lv.prompt, lv.out.token_ids, lv.params)
            if reason is not None:
                lv.done, lv.out.finish_reason = True, reason
            if rejected or lv.done:
                break
        if lv.llm is not None and lv.llm_seen > len(lv.tokens) - int(rejected):
            lv.llm_seen = len(lv.tokens) - int(rejected)  # drop what the LLM saw past the accepted drafts
            llm.truncate(lv.llm, lv.llm_seen)
        accepted_drafts = len(lv.out.token_ids) - committed_before - int(rejected)
        slm_keep = len(lv.prompt) + committed_before + accepted_drafts
        if lv.slm.length > slm_keep:
            slm.truncate(lv.slm, slm_keep)  # drop rejected drafts
        if n_flags:
            lv.reject_rate += cfg.ema * (float(rejected) - lv.reject_rate)
        lv.flag_rate += cfg.ema * (n_flags / len(lv.drafts) - lv.flag_rate)
        if rejected and not lv.done:
            corrected.append(lv)
    return corrected


def _accept_or_correct(d: _Draft, p_logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int | None:
    """None when the flagged draft is accepted, else the corrected token."""
    if params.greedy:
        best = int(torch.argmax(p_logits))
        return None if best == d.token else best
    p = processed_probs(p_logits, params)  # [vocab] the LLM's distribution, same temperature/top-p/top-k
    q = d.q
    assert q is not None and q.shape == p.shape, "sampling drafts carry the SLM's distribution"
    if float(torch.rand(1, generator=gen)) * float(q[d.token]) <= float(p[d.token]):  # u < p/q
        return None
    residual = (p - q).clamp(min=0.0)  # norm(max(p - q, 0)): where p exceeds what the draft covers
    return int(torch.multinomial(residual / residual.sum(), 1, generator=gen))


def _llm_logits(llm: Backend, need: list[_Live]) -> dict[int, dict[int, torch.Tensor]]:
    """The LLM's logits predicting each flagged draft, per request: catch-up + drafts up to the last
    flagged one, in one batched pass (two when some requests meet the LLM for the first time)."""
    feeds: dict[int, tuple[list[int], int]] = {}
    for lv in need:
        last_flag = max(j for j, d in enumerate(lv.drafts) if d.flagged)
        drafts = [d.token for d in lv.drafts[:last_flag]]
        if lv.llm is not None and lv.llm_seen == len(lv.tokens):
            lv.llm_seen -= 1  # nothing to catch up on: re-feed the last token to get the row predicting draft 0
            llm.truncate(lv.llm, lv.llm_seen)
        feed = lv.tokens[lv.llm_seen :] + drafts
        feeds[lv.index] = (feed, len(feed) - len(drafts) - 1)  # row predicting draft 0
    outs: dict[int, StepOutput] = {}
    fresh = [lv for lv in need if lv.llm is None]
    if fresh:
        for lv, (seq, out) in zip(fresh, llm.open([feeds[lv.index][0] for lv in fresh])):
            lv.llm, outs[lv.index] = seq, out
    behind = [lv for lv in need if lv.index not in outs]
    if behind:
        for lv, out in zip(behind, llm.extend([lv.llm for lv in behind], [feeds[lv.index][0] for lv in behind])):
            outs[lv.index] = out
    rows: dict[int, dict[int, torch.Tensor]] = {}
    for lv in need:
        feed, first = feeds[lv.index]
        lv.llm_seen += len(feed)
        lv.out.stats.llm_passes += 1
        rows[lv.index] = {j: outs[lv.index].logits[first + j] for j, d in enumerate(lv.drafts) if d.flagged}
    return rows
