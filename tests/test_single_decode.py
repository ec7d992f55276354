"""One model alone (`serving.decoding.decode`) against independent references: transformers' own greedy
generate, and routed decoding with a policy that never routes (same draws under seeded sampling)."""
from __future__ import annotations

import pytest
import torch

from r2r.router.policies import AlwaysSLM
from r2r.serving.decoding.generation import FinishReason, Source
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import generate_sequential
from r2r.serving.decoding import decode
from r2r.serving.decoding.stopping import StopRule
from r2r.serving.pair import PairSpec, load_pair
from r2r.testbed.splits import heldout
from r2r.testbed.tokenizer import chat_text


@pytest.fixture(scope="module")
def setup(tiny_models):
    pair = load_pair(PairSpec("tiny", tiny_models["llama"], tiny_models["llama_b"]), "cpu")
    prompts = [list(pair.tokenizer(chat_text(p.prompt))["input_ids"]) for p in heldout("math", "test", 5)]
    rule = StopRule(frozenset({pair.tokenizer.eos_token_id}), pair.tokenizer.decode, pair.context_length)
    return pair, prompts, rule


def test_greedy_equals_transformers_generate(setup) -> None:
    pair, prompts, rule = setup
    gens = decode(pair.llm, prompts, [SamplingParams(max_tokens=12)] * len(prompts), rule)
    for prompt, gen in zip(prompts, gens):
        with torch.inference_mode():
            ref = pair.llm.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                          attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        want = ref[0, len(prompt):].tolist()
        eos = pair.tokenizer.eos_token_id
        assert gen.token_ids == want[: want.index(eos) + 1] if eos in want else gen.token_ids == want


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=10),
                                    SamplingParams(max_tokens=10, temperature=0.9, top_p=0.8, seed=7)])
def test_same_tokens_as_routing_that_never_routes(setup, params: SamplingParams) -> None:
    pair, prompts, rule = setup
    alone = decode(pair.slm, prompts, [params] * len(prompts), rule, role=Source.LLM)
    routed = generate_sequential(pair.slm, pair.slm, AlwaysSLM(), prompts, [params] * len(prompts), rule)
    for a, r in zip(alone, routed):
        assert a.token_ids == r.token_ids and a.text == r.text and a.finish_reason == r.finish_reason
        assert a.sources == [Source.LLM] * len(a.token_ids) and a.stats.llm_tokens == len(a.token_ids)
        assert a.stats.llm_passes == len(a.token_ids), "one prefill plus one pass per token after the first"
        assert len(a.token_ids) <= 10 and (a.finish_reason == FinishReason.STOP or len(a.token_ids) == 10)
    assert pair.slm.open_sequences == 0, "every sequence is closed"
