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

import torch

from router.policies import RoutingPolicy
from serving.backends.base import Backend
from serving.engine import BlockConfig, Draft, Request, RoutedEngine, llm_feed, route, run_to_completion, slm_feed
from serving.generation import Generation, RoutingMode, Source
from serving.sampling import SamplingParams, processed_probs
from serving.stopping import StopRule


def block_size(r: Request, cfg: BlockConfig) -> int:
    run = 1.0 / max(1e-3, r.flag_rate * r.reject_rate)
    return max(cfg.k_min, min(cfg.k_max, math.ceil(run)))


def speculative_round(engine: RoutedEngine, reqs: list[Request]) -> None:
    """One block for every request: draft, verify the flagged positions, commit, resynchronise the SLM."""
    _draft(engine, reqs)
    corrected = _verify(engine, reqs)
    slm_feed(engine.slm, corrected, [r.out.token_ids[-1] for r in corrected])  # the SLM has not seen them
    for r in reqs:
        r.drafts = []
        r.out.stats.blocks += 1


def generate_speculative(slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]],
                         params: list[SamplingParams], stop_rule: StopRule, stream_keys: list[int] | None = None,
                         block: BlockConfig | None = None) -> list[Generation]:
    """Decode every prompt with speculative routing, batched across prompts; same output (greedy) or
    same distribution (sampling) as serving.sequential.generate_sequential."""
    return run_to_completion(slm, llm, policy, prompts, params, stop_rule, RoutingMode.SPECULATIVE, stream_keys,
                             block)


def _draft(engine: RoutedEngine, reqs: list[Request]) -> None:
    """Each request drafts up to its block size; one batched SLM pass per drafted position."""
    sizes = {id(r): block_size(r, engine.block) for r in reqs}
    drafting = list(reqs)
    while drafting:
        scores, flagged = route(drafting, [len(r.tokens) + len(r.drafts) for r in drafting])
        still = []
        for r, score, f in zip(drafting, scores, flagged):
            logits = r.slm_out.logits[-1]
            if r.params.greedy:
                token, q = int(torch.argmax(logits)), None
            else:
                q = processed_probs(logits, r.params)
                token = int(torch.multinomial(q, 1, generator=r.generator))
            r.drafts.append(Draft(token, bool(f), float(score), q))
            ended = engine.stop_rule.check_tokens(r.prompt, r.out.token_ids + [d.token for d in r.drafts], r.params)
            if ended is None and len(r.drafts) < sizes[id(r)]:
                still.append(r)
        # every draft goes into the SLM: accepted ones need their KV and the next position's outputs
        slm_feed(engine.slm, drafting, [r.drafts[-1].token for r in drafting])
        drafting = still


def _verify(engine: RoutedEngine, reqs: list[Request]) -> list[Request]:
    """One LLM pass over every request with a flagged draft; commit accepted drafts and corrections.

    Returns the running requests whose block ended in a correction: the SLM has not seen that token.
    """
    rows = _llm_logits(engine.llm, [r for r in reqs if any(d.flagged for d in r.drafts)])
    corrected: list[Request] = []
    cfg = engine.block
    for r in reqs:
        committed_before = len(r.out.token_ids)
        n_flags = sum(d.flagged for d in r.drafts)
        rejected = False
        for j, d in enumerate(r.drafts):
            token = d.token
            if d.flagged:
                correction = _accept_or_correct(d, rows[id(r)][j], r.params, r.generator)
                if correction is not None:
                    token, rejected = correction, True
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
        accepted_drafts = len(r.out.token_ids) - committed_before - int(rejected)
        slm_keep = len(r.prompt) + committed_before + accepted_drafts
        if r.slm.length > slm_keep:
            engine.slm.truncate(r.slm, slm_keep)  # drop rejected drafts
        if n_flags:
            r.reject_rate += cfg.ema * (float(rejected) - r.reject_rate)
        r.flag_rate += cfg.ema * (n_flags / len(r.drafts) - r.flag_rate)
        if rejected and not r.done:
            corrected.append(r)
    return corrected


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


def _llm_logits(llm: Backend, need: list[Request]) -> dict[int, dict[int, torch.Tensor]]:
    """The LLM's logits predicting each flagged draft, per request: catch-up + drafts up to the last
    flagged one, in one batched pass (two when some requests meet the LLM for the first time)."""
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
    outs = llm_feed(llm, need, feeds) if need else []
    return {id(r): {j: out.logits[first + j] for j, d in enumerate(r.drafts) if d.flagged}
            for r, out, first in zip(need, outs, firsts)}
