"""Sequential routed decoding: the reference semantics every faster mode must reproduce.

Glossary
  SLM / LLM      the small model that proposes every token / the large model that writes routed ones.
  flagged        a position whose router score exceeds the threshold: the LLM writes that token.
  catch-up       the LLM is lazy: it only sees the tokens written since its last pass when it is
                 next needed, all of them in one extend.

At each step the SLM's logits (and hidden state) at the current position are scored by each
request's policy; flagged requests get their token from the LLM (after catch-up), the rest
from the SLM; then every request still running appends its token to the SLM in one pass.
"""
from __future__ import annotations

import torch

from r2r.router.rows import row_logprobs
from r2r.serving.backends.base import LAST_ROW, RowKind, StepOutput
from r2r.serving.decoding.engine import Request, StepContext, llm_feed, route, slm_feed
from r2r.serving.decoding.generation import Generation, Source
from r2r.serving.decoding.sampling import choose_token



def sequential_step(engine: StepContext, reqs: list[Request]) -> None:
    """One token for every request."""
    scores, flagged = route(reqs, [r.length for r in reqs])
    routed = [r for r, f in zip(reqs, flagged) if f]
    llm_outs: dict[int, StepOutput] = {}
    if routed:
        outs = llm_feed(engine.llm, routed, [r.tokens_from(r.llm_seen) for r in routed], [LAST_ROW] * len(routed))
        llm_outs = {id(r): o for r, o in zip(routed, outs)}
    for r, score, f in zip(reqs, scores, flagged):
        writer = llm_outs[id(r)] if f else r.slm_out
        logits = writer.logits[-1]
        r.out.token_ids.append(choose_token(logits, r.params, r.generator))
        if r.params.logprobs is not None:
            record_logprobs(r.out, logits, writer.kind, r.params.logprobs)
        r.out.sources.append(Source.LLM if f else Source.SLM)
        r.out.scores.append(float(score))
        r.out.stats.llm_tokens += int(f)
        reason = r.stops.commit(r.out.token_ids)
        if reason is not None:
            r.done, r.out.finish_reason = True, reason
    running = [r for r in reqs if not r.done]
    slm_feed(engine.slm, running, [r.out.token_ids[-1] for r in running])


def record_logprobs(out: Generation, logits: torch.Tensor, kind: RowKind, k: int) -> None:
    """The chosen token's log-prob under the model that wrote it, and the k most likely alternatives (from a row
    of `kind`: top-k log-prob rows as they are, -inf outside their top-k)."""
    lp = row_logprobs(logits[None], kind)[0]  # [vocab]
    out.logprobs.append(float(lp[out.token_ids[-1]]))
    top = torch.topk(lp, k) if k else None
    out.top_logprobs.append([] if top is None else list(zip(top.indices.tolist(), top.values.tolist())))
