"""Speculative routing: the SLM drafts a block, the LLM verifies only the flagged subset in one pass.

Glossary (terms of serving.decoding.sequential, plus)
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

Draft calls. Greedy drafts depend only on the prefix, so a block can be drafted in one
`Backend.draft` call and routed after it: the drafts, the router's rows and so the flags are the
ones drafting a token per step would have seen. Where the backend pays a fixed cost per call
(SGLang: a trip through its scheduler process) that is one call per block instead of one per token
(`DraftCalls`); the block then runs to its size (or a stop) whatever it flags, as a request riding
along does. Sampling drafts go a token per step (each draws from the request's own generator).
"""
from __future__ import annotations

import math
import time
from typing import Protocol

import torch

from serving.decoding.engine import (BlockConfig, Draft, DraftCalls, Request, StepContext, llm_feed, route, route_rows,
                                     slm_feed)
from serving.decoding.generation import Source
from serving.decoding.pass_costs import PassCosts
from serving.decoding.sampling import SamplingParams, processed_probs


_DRAFT, _VERIFY = 0, 1  # random streams per position (Request.generator_at)


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


def speculative_step(engine: StepContext, reqs: list[Request]) -> None:
    """One step of speculative routing: a whole round for greedy requests where blocks are drafted in one call
    (`block_round`), one drafting pass of a token-per-step round for the others (`stepwise_step`)."""
    whole = [r for r in reqs if r.params.greedy] if drafts_per_block(engine) else []
    if whole:
        block_round(engine, whole)
    in_block = {id(r) for r in whole}
    stepwise = [r for r in reqs if id(r) not in in_block]
    if stepwise:
        stepwise_step(engine, stepwise)


def drafts_per_block(engine: StepContext) -> bool:
    calls = engine.block.draft_calls
    return calls == DraftCalls.PER_BLOCK or (calls == DraftCalls.BACKEND and engine.slm.drafts_in_one_call)


def block_round(engine: StepContext, reqs: list[Request]) -> None:
    """A whole round for greedy requests in one SLM call and one LLM call (two where some requests meet the LLM
    for the first time): each request's block drafted by `Backend.draft`, every drafted position routed, the
    flagged ones verified, the accepted drafts and the correction committed.

    Between rounds the SLM holds the committed tokens but the last (or all of them, after the prompt's
    prefill): the next draft call feeds the rest in front of its drafts, so resynchronising costs no call."""
    slm, batch = engine.slm, len(reqs)
    for r in reqs:
        r.block = min(block_size(r, engine.block, engine.costs, batch), r.params.max_tokens - len(r.out.token_ids),
                      engine.stop_rule.context_length - len(r.tokens))
        assert r.block >= 1, f"a running request has room for a draft: block {r.block}"
        keep = min(r.slm.length, len(r.tokens) - 1)
        if r.slm.length > keep:
            slm.truncate(r.slm, keep)  # drafts past a correction, or the prompt's last token (its row is recomputed)
    start = time.perf_counter()
    hidden = any(r.policy.needs_hidden for r in reqs)
    blocks = slm.draft([r.slm for r in reqs], [r.tokens[r.slm.length :] for r in reqs], [r.block for r in reqs],
                       want_hidden=hidden)
    engine.costs.draft.observe(batch, (time.perf_counter() - start) / max(r.block for r in reqs))  # per position
    # every drafted position of every request routed at once: [sum of blocks] rows
    at = [(r, b, j) for r, b in zip(reqs, blocks) for j in range(len(b.tokens))]
    scores, flagged = route_rows([r.policy for r, _, _ in at], [b.out.logits[j] for _, b, j in at],
                                 [None if b.out.hidden is None else b.out.hidden[j] for _, b, j in at],
                                 [len(r.tokens) + j for r, _, j in at], [r.key for r, _, _ in at],
                                 [b.out.kind for _, b, _ in at])
    routed = iter(zip(scores, flagged))
    for r, b in zip(reqs, blocks):
        for token, (score, f) in zip(b.tokens, [next(routed) for _ in b.tokens]):
            r.drafts.append(Draft(token, bool(f), float(score), None))
            if engine.stop_rule.check_tokens(r.prompt, r.out.token_ids + [d.token for d in r.drafts],
                                             r.params) is not None:
                break  # nothing past a stop
        r.out.stats.slm_passes += len(b.tokens)
    _verify(engine, reqs)
    for r in reqs:
        r.drafts, r.block = [], 0
        r.out.stats.blocks += 1


def stepwise_step(engine: StepContext, reqs: list[Request]) -> None:
    """One drafting pass of the round in progress (a round opens with every request), and when no
    request drafts on, the round's end: verify the flagged positions, commit, resynchronise the SLM.

    A round lasts as long as its longest block. Requests that join mid-round (continuous batching)
    ride along from the next pass: they draft while the round lasts, up to their own block size, and
    are verified with it, instead of waiting for the round to end (at concurrency 32 a round is ~14
    passes, a request's whole life ~5 rounds).

    A block's last draft is not fed to the SLM while drafting: after verification the SLM is fed
    the last committed token (that draft, or the LLM's correction), so a rejection costs no extra
    SLM pass."""
    joining = engine.drafting is not None
    drafting = engine.drafting if joining else []
    for r in reqs:
        if not r.block:  # opening the round, or joining it
            r.block = block_size(r, engine.block, engine.costs, len(reqs))
            r.riding = joining
            drafting.append(r)
    with engine.costs.timing("draft", len(drafting)):
        engine.drafting = _draft_step(engine, drafting, len(reqs))
    if engine.drafting:
        return
    engine.drafting = None
    _verify(engine, reqs)
    running = [r for r in reqs if not r.done]
    for r in running:
        keep = len(r.tokens) - 1
        if r.slm.length > keep:
            engine.slm.truncate(r.slm, keep)  # drafts past a correction
    slm_feed(engine.slm, running, [r.tokens[-1] for r in running])
    for r in reqs:
        r.drafts, r.block, r.riding = [], 0, False
        r.out.stats.blocks += 1


def _draft_step(engine: StepContext, drafting: list[Request], batch: int) -> list[Request]:
    """One drafted position for each drafting request, in one batched SLM pass; returns those that draft on.

    A request drafts up to its block size, or to a flag it should not draft past. The round lasts
    while some request wants to draft on. Requests that would stop at a flag ride along (up to their
    block size) meanwhile: the pass runs anyway, so their extra drafts cost one row each and are kept
    whenever their flags are accepted; they do not make the round longer. `batch`: requests in the round
    (joiners included), for the block sizer's costs."""
    scores, flagged = route(drafting, [len(r.tokens) + len(r.drafts) for r in drafting])
    wanting, rides = [], []
    for r, score, f in zip(drafting, scores, flagged):
        logits = r.slm_out.logits[-1]
        if r.params.greedy:
            token, q = int(torch.argmax(logits)), None
        else:
            q = processed_probs(logits, r.params)
            token = int(torch.multinomial(q, 1, generator=r.generator_at(len(r.tokens) + len(r.drafts), _DRAFT)))
        r.drafts.append(Draft(token, bool(f), float(score), q))
        k_left = r.block - len(r.drafts)
        if k_left <= 0 or engine.stop_rule.check_tokens(r.prompt, r.out.token_ids + [d.token for d in r.drafts],
                                                        r.params) is not None:
            continue
        if not r.riding and (not f or past_flag(r, k_left, engine.costs, batch)):
            wanting.append(r)
        else:
            r.riding = True
            rides.append(r)
    still = wanting + rides if wanting else []
    # drafts that are drafted on from go into the SLM now (their KV, the next position's outputs)
    slm_feed(engine.slm, still, [r.drafts[-1].token for r in still])
    return still


def _verify(engine: StepContext, reqs: list[Request]) -> None:
    """One LLM pass over every request with a flagged draft; commit accepted drafts and corrections."""
    need = [r for r in reqs if any(d.flagged for d in r.drafts)]
    rows = _llm_logits(engine, need)
    cfg = engine.block
    for r in reqs:
        n_flags = sum(d.flagged for d in r.drafts)
        rejected = False
        for j, d in enumerate(r.drafts):
            token = d.token
            if d.flagged:
                correction = _accept_or_correct(d, rows[id(r)][j], r.params,
                                                r.generator_at(len(r.tokens), _VERIFY))
                rejected = correction is not None
                r.reject_rate += cfg.ema * (float(rejected) - r.reject_rate)  # per verified flag
                if rejected:
                    token = correction
            r.out.token_ids.append(token)
            r.out.sources.append(Source.LLM if d.flagged else Source.SLM)
            r.out.scores.append(d.score)
            r.out.stats.llm_tokens += int(d.flagged)
            reason = engine.stop_rule.check_tokens(r.prompt, r.out.token_ids, r.params)
            if reason is not None:
                r.done, r.out.finish_reason = True, reason
            if rejected or r.done:
                break
        if r.llm is not None and r.llm_seen > len(r.tokens) - int(rejected):
            r.llm_seen = len(r.tokens) - int(rejected)  # drop what the LLM saw past the accepted drafts
            engine.llm.truncate(r.llm, r.llm_seen)
        r.flag_rate += cfg.ema * (n_flags / len(r.drafts) - r.flag_rate)


def _accept_or_correct(d: Draft, p_logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int | None:
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


def _llm_logits(engine: StepContext, need: list[Request]) -> dict[int, dict[int, torch.Tensor]]:
    """The LLM's logits predicting each flagged draft, per request: catch-up + drafts up to the last
    flagged one, in one batched pass (two when some requests meet the LLM for the first time)."""
    llm = engine.llm
    feeds, firsts = [], []
    for r in need:
        last_flag = max(j for j, d in enumerate(r.drafts) if d.flagged)
        drafts = [d.token for d in r.drafts[:last_flag]]
        if r.llm is not None and r.llm_seen == len(r.tokens):
            r.llm_seen -= 1  # nothing to catch up on: re-feed the last token to get the row predicting draft 0
            llm.truncate(r.llm, r.llm_seen)
        feed = r.tokens[r.llm_seen :] + drafts
        feeds.append(feed)
        firsts.append(len(feed) - len(drafts) - 1)  # the row predicting draft 0
    flagged = [[j for j, d in enumerate(r.drafts) if d.flagged] for r in need]
    with engine.costs.timing("llm", sum(map(len, feeds))):  # rows at the flagged positions only
        outs = llm_feed(llm, need, feeds, [tuple(first + j for j in js) for js, first in zip(flagged, firsts)])
    return {id(r): dict(zip(js, out.logits)) for r, out, js in zip(need, outs, flagged)}
