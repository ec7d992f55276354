"""One model decoding alone: the baseline every routed configuration is measured against.

No router and no second model: each step picks every running row's token from its own logits (greedy, or a
draw with the request's temperature / top-p / top-k and seed) and appends them in one batched extend.
Token-identical to routed decoding with a policy that never routes (the same per-request generator draws the
same numbers), without paying for a router or a second backend.
"""
from __future__ import annotations

import time

from serving.backends.base import Backend
from serving.decoding.generation import Generation, Source
from serving.decoding.sampling import SamplingParams, choose_token, make_generator
from serving.decoding.sequential import record_logprobs
from serving.decoding.stopping import StopRule


def decode(backend: Backend, prompts: list[list[int]], params: list[SamplingParams], stop_rule: StopRule,
           role: Source = Source.SLM) -> list[Generation]:
    """Decode every prompt to its end with `backend` alone, batched. `role` names the model in the output:
    its tokens' source, and which pass counter (and LLM-token count) its work goes to."""
    assert len(prompts) == len(params), f"{len(prompts)} prompts but {len(params)} SamplingParams"
    start = time.perf_counter()
    opened = backend.open(prompts)
    seqs = [seq for seq, _ in opened]
    logits = [out.logits[-1] for _, out in opened]
    kinds = [out.kind for _, out in opened]
    gens = [Generation(prompt_tokens=len(p)) for p in prompts]
    generators = [make_generator(p.seed) for p in params]
    running = list(range(len(prompts)))
    passes = {i: 1 for i in running}
    while running:
        going = []
        for i in running:
            gen = gens[i]
            gen.token_ids.append(choose_token(logits[i], params[i], generators[i]))
            gen.sources.append(role)
            gen.scores.append(0.0)
            if params[i].logprobs is not None:
                record_logprobs(gen, logits[i], kinds[i], params[i].logprobs)
            reason = stop_rule.check_tokens(prompts[i], gen.token_ids, params[i])
            if reason is None:
                going.append(i)
            else:
                gen.finish_reason = reason
        running = going
        if running:
            outs = backend.extend([seqs[i] for i in running], [[gens[i].token_ids[-1]] for i in running])
            for i, out in zip(running, outs):
                logits[i], kinds[i] = out.logits[-1], out.kind
                passes[i] += 1
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
