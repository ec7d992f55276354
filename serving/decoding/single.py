"""One model decoding alone: the baseline every routed configuration is measured against.

No router and no second model: each step picks every running row's token from its own logits (greedy, or a
draw with the request's temperature / top-p / top-k and seed) and appends them in one batched extend.
Token-identical to routed decoding with a policy that never routes (the same per-request generator draws the
same numbers), without paying for a router or a second backend.

On a backend that drafts in one call (SGLang: `Backend.drafts_in_one_call`), an all-greedy batch goes a block of
up to `BLOCK` tokens per call (`Backend.draft`: each token its row's argmax, as here), cut at the stop afterwards:
the same tokens, a fixed cost per call paid once a block instead of once a token.
"""
from __future__ import annotations

import time

from r2r.serving.backends.base import LAST_ROW, Backend, StepOutput
from r2r.serving.decoding.generation import Generation, Source
from r2r.serving.decoding.sampling import SamplingParams, choose_token, make_generator
from r2r.serving.decoding.sequential import record_logprobs
from r2r.serving.decoding.stopping import StopRule, TokenStops


def decode(backend: Backend, prompts: list[list[int]], params: list[SamplingParams], stop_rule: StopRule,
           role: Source = Source.SLM) -> list[Generation]:
    """Decode every prompt to its end with `backend` alone, batched. `role` names the model in the output:
    its tokens' source, and which pass counter (and LLM-token count) its work goes to."""
    assert len(prompts) == len(params), f"{len(prompts)} prompts but {len(params)} SamplingParams"
    start = time.perf_counter()
    opened = backend.open(prompts, rows_at=[LAST_ROW] * len(prompts))
    seqs = [seq for seq, _ in opened]
    gens = [Generation(prompt_tokens=len(p)) for p in prompts]
    passes = {i: 1 for i in range(len(prompts))}
    stops = [stop_rule.watch(len(p), sp) for p, sp in zip(prompts, params)]
    if backend.drafts_in_one_call and all(p.greedy for p in params):
        context = min(stop_rule.context_length, backend.max_length)
        _decode_in_blocks(backend, prompts, stops, context, role, opened, gens, passes)
    else:
        _decode_per_token(backend, stops, role, opened, gens, passes)
    for seq in seqs:
        backend.close(seq)
    elapsed = time.perf_counter() - start
    for i, gen in enumerate(gens):
        gen.text = stop_rule.text_of(gen.token_ids, params[i].stop)
        gen.stats.seconds = elapsed
        if role == Source.LLM:
            gen.stats.llm_passes, gen.stats.llm_tokens = passes[i], len(gen.token_ids)
        else:
            gen.stats.slm_passes = passes[i]
    return gens


BLOCK = 32  # greedy tokens per `draft` call; past a stop the rest of a block is computed and dropped


def _commit(gen: Generation, token: int, logits, kind, stops: TokenStops, role: Source) -> bool:
    """Append one token; True while the generation goes on."""
    gen.token_ids.append(token)
    gen.sources.append(role)
    gen.scores.append(0.0)
    if stops.params.logprobs is not None:
        record_logprobs(gen, logits, kind, stops.params.logprobs)
    reason = stops.commit(gen.token_ids)
    if reason is not None:
        gen.finish_reason = reason
    return reason is None


def _decode_in_blocks(backend: Backend, prompts: list[list[int]], stops: list[TokenStops], context: int,
                      role: Source, opened: list, gens: list[Generation], passes: dict[int, int]) -> None:
    """Greedy: each sequence's first token from its prefill row, then blocks drafted after its last token."""
    seqs = [seq for seq, _ in opened]
    running = [i for i, (_, out) in enumerate(opened)
               if _commit(gens[i], int(out.logits[-1].argmax()), out.logits[-1], out.kind, stops[i], role)]
    while running:
        n = [min(BLOCK, stops[i].params.max_tokens - len(gens[i].token_ids),
                 context - len(prompts[i]) - len(gens[i].token_ids)) for i in running]
        blocks = backend.draft([seqs[i] for i in running], [gens[i].token_ids[-1:] for i in running], n)
        going = []
        for i, block in zip(running, blocks):
            passes[i] += len(block.tokens)
            rows: StepOutput = block.out
            if all(_commit(gens[i], t, rows.logits[j], rows.kind, stops[i], role) for j, t in enumerate(block.tokens)):
                going.append(i)  # the sequence holds all but its last token, fed with the next block
        running = going


def _decode_per_token(backend: Backend, stops: list[TokenStops], role: Source, opened: list, gens: list[Generation],
                      passes: dict[int, int]) -> None:
    seqs = [seq for seq, _ in opened]
    logits = [out.logits[-1] for _, out in opened]
    kinds = [out.kind for _, out in opened]
    generators = [make_generator(s.params.seed) for s in stops]
    running = list(range(len(stops)))
    while running:
        running = [i for i in running if _commit(gens[i], choose_token(logits[i], stops[i].params, generators[i]),
                                                 logits[i], kinds[i], stops[i], role)]
        if running:
            outs = backend.extend([seqs[i] for i in running], [[gens[i].token_ids[-1]] for i in running])
            for i, out in zip(running, outs):
                logits[i], kinds[i] = out.logits[-1], out.kind
                passes[i] += 1
