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

The round itself (who drafts on, when it ends, how a verified block is committed) is
`serving.decoding.rounds`, shared with the byte-level engine; this module is how tokens are
drafted and judged (`TokenSpeculator`), and the one-call round below.

Draft calls. Greedy drafts depend only on the prefix, so a block can be drafted in one
`Backend.draft` call and routed after it: the drafts, the router's rows and so the flags are the
ones drafting a token per step would have seen. Where the backend pays a fixed cost per call
(SGLang: a trip through its scheduler process) that is one call per block instead of one per token
(`DraftCalls`); the block then runs to its size (or a stop) whatever it flags, as a request riding
along does. Sampling drafts go a token per step (each draws from the request's own generator).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from r2r.serving.decoding.engine import Draft, Request, StepContext, llm_feed, route, route_rows, slm_feed
from r2r.serving.decoding.generation import Source
from r2r.serving.decoding.rounds import DRAFT, VERIFY, DraftCalls, block_size, end_round, round_step
from r2r.serving.decoding.rounds import past_flag  # noqa: F401 (re-exported: block sizing, beside block_size)
from r2r.serving.decoding.sampling import SamplingParams, processed_probs


def speculative_step(engine: StepContext, reqs: list[Request]) -> None:
    """One step of speculative routing: a whole round for greedy requests where blocks are drafted in one call
    (`block_round`), one drafting pass of a token-per-step round for the others (`serving.decoding.rounds`)."""
    whole = [r for r in reqs if r.params.greedy] if drafts_per_block(engine) else []
    if whole:
        block_round(engine, whole)
    in_block = {id(r) for r in whole}
    stepwise = [r for r in reqs if id(r) not in in_block]
    if stepwise:
        round_step(engine, stepwise, TokenSpeculator(engine))


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
                      engine.stop_rule.context_length - r.length)
        assert r.block >= 1, f"a running request has room for a draft: block {r.block}"
        keep = min(r.slm.length, r.length - 1)
        if r.slm.length > keep:
            slm.truncate(r.slm, keep)  # the prompt's last token: its row is recomputed by the draft call
    start = time.perf_counter()
    hidden = any(r.policy.needs_hidden for r in reqs)
    blocks = slm.draft([r.slm for r in reqs], [r.tokens_from(r.slm.length) for r in reqs], [r.block for r in reqs],
                       want_hidden=hidden)
    engine.costs.draft.observe(batch, (time.perf_counter() - start) / max(r.block for r in reqs))  # per position
    # every drafted position of every request routed at once: [sum of blocks] rows
    at = [(r, b, j) for r, b in zip(reqs, blocks) for j in range(len(b.tokens))]
    scores, flagged = route_rows([r.policy for r, _, _ in at], [b.out.logits[j] for _, b, j in at],
                                 [None if b.out.hidden is None else b.out.hidden[j] for _, b, j in at],
                                 [r.length + j for r, _, j in at], [r.key for r, _, _ in at],
                                 [b.out.kind for _, b, _ in at])
    routed = iter(zip(scores, flagged))
    for r, b in zip(reqs, blocks):
        for token, (score, f) in zip(b.tokens, [next(routed) for _ in b.tokens]):
            r.drafts.append(Draft(token, bool(f), float(score), None))
            if r.stops.peek(r.out.token_ids, [d.token for d in r.drafts]) is not None:
                break  # nothing past a stop
        r.out.stats.slm_passes += len(b.tokens)
    end_round(engine.block, reqs, TokenSpeculator(engine))


@dataclass
class TokenSpeculator:
    """Token-level drafting and judging for a round (`serving.decoding.rounds.Speculator`).

    Between drafting passes the SLM holds the committed tokens and the drafts but the last: a drafting pass
    first feeds that one (one batched SLM pass), then drafts from the row it gives. So a block's last draft
    is not fed while drafting, and after verification the next round's first pass feeds the last committed
    token (that draft, or the LLM's correction): a rejection costs no extra SLM pass."""

    ctx: StepContext

    def draft(self, reqs: list[Request]) -> list[bool]:
        behind = [r for r in reqs if r.slm.length < r.length + len(r.drafts)]
        slm_feed(self.ctx.slm, behind, [_unfed(r) for r in behind])
        scores, flagged = route(reqs, [r.length + len(r.drafts) for r in reqs])
        more = []
        for r, score, f in zip(reqs, scores, flagged):
            logits = r.slm_out.logits[-1]  # [vocab] the SLM's row predicting this position
            if r.params.greedy:
                token, q = int(torch.argmax(logits)), None
            else:
                q = processed_probs(logits, r.params)
                token = int(torch.multinomial(q, 1, generator=r.generator_at(r.length + len(r.drafts), DRAFT)))
            r.drafts.append(Draft(token, bool(f), float(score), q))
            more.append(r.stops.peek(r.out.token_ids, [d.token for d in r.drafts]) is None)
        return more

    def verify(self, reqs: list[Request]) -> TokenJudge:
        need = [r for r in reqs if any(d.flagged for d in r.drafts)]
        rows = _llm_logits(self.ctx, need)
        return TokenJudge(self.ctx, {id(r.drafts[j]): row for r in need for j, row in rows[id(r)].items()})


def _unfed(r: Request) -> int:
    """The one token of committed tokens + drafts the SLM does not hold yet."""
    behind = r.length + len(r.drafts) - r.slm.length
    assert behind == 1, f"the SLM is one token behind between passes, not {behind}"
    return r.drafts[-1].token if r.drafts else r.last_token()


@dataclass
class TokenJudge:
    """Commits token blocks (`serving.decoding.rounds.Judge`) from the LLM's rows at their flagged drafts."""

    ctx: StepContext
    rows: dict[int, torch.Tensor]  # id(draft) -> [vocab] the LLM's logits predicting it

    def keep(self, r: Request, d: Draft) -> None:
        self._write(r, d.token, Source.SLM, d.score)

    def settle(self, r: Request, d: Draft) -> bool:
        correction = _accept_or_correct(d, self.rows[id(d)], r.params, r.generator_at(r.length, VERIFY))
        if correction is not None:  # both models drop the rejected draft and what they hold past it
            if r.slm.length > r.length:
                self.ctx.slm.truncate(r.slm, r.length)
            if r.llm is not None and r.llm_seen > r.length:
                r.llm_seen = r.length
                self.ctx.llm.truncate(r.llm, r.llm_seen)
        self._write(r, d.token if correction is None else correction, Source.LLM, d.score)
        return correction is not None

    def drop(self, r: Request, dropped: list[Draft]) -> None:
        """Token drafts hold nothing of their own."""

    def _write(self, r: Request, token: int, source: Source, score: float) -> None:
        r.out.token_ids.append(token)
        r.out.sources.append(source)
        r.out.scores.append(score)
        r.out.stats.llm_tokens += int(source == Source.LLM)
        reason = r.stops.commit(r.out.token_ids)
        if reason is not None:
            r.done, r.out.finish_reason = True, reason


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
        if r.llm is not None and r.llm_seen == r.length:
            r.llm_seen -= 1  # nothing to catch up on: re-feed the last token to get the row predicting draft 0
            llm.truncate(r.llm, r.llm_seen)
        feed = r.tokens_from(r.llm_seen) + drafts
        feeds.append(feed)
        firsts.append(len(feed) - len(drafts) - 1)  # the row predicting draft 0
    flagged = [[j for j, d in enumerate(r.drafts) if d.flagged] for r in need]
    with engine.costs.timing("llm", sum(map(len, feeds))):  # rows at the flagged positions only
        outs = llm_feed(llm, need, feeds, [tuple(first + j for j in js) for js, first in zip(flagged, firsts)])
    return {id(r): dict(zip(js, out.logits)) for r, out, js in zip(need, outs, flagged)}
