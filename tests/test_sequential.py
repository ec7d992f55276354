"""Sequential routed decoding against independent references (HF generate, uncached forward passes)."""
from __future__ import annotations

import pytest
import torch

from r2r.testbed.splits import heldout
from r2r.router.policies import AlwaysLLM, AlwaysSLM, RandomPolicy
from r2r.serving.decoding.generation import FinishReason, RoutingMode, Source
from r2r.serving.pair import ModelPair, PairSpec, load_pair
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import generate_sequential

TIE_MARGIN = 1e-4


@pytest.fixture(scope="module")
def pair(testbed_dirs) -> ModelPair:
    return load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"]), "cpu")


@pytest.fixture(scope="module")
def prompts(pair: ModelPair) -> list[list[int]]:
    problems = heldout("math", "validation", 4) + heldout("code", "validation", 4)
    return [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]


def hf_greedy(model, prompt: list[int], max_new: int, eos: int) -> list[int]:
    """Reference: transformers' own greedy generate."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def assert_same_or_tie(model, prompt: list[int], got: list[int], want: list[int]) -> None:
    """Token-identical, unless the first difference is a float-noise tie (reported with its margin)."""
    if got == want:
        return
    i = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + want[:i]])).logits[0, -1]
    margin = abs(float(logits[got[i]] - logits[want[i]]))
    assert margin < TIE_MARGIN, f"outputs differ at token {i} with logit margin {margin:.2e} (not a tie)"


@pytest.mark.parametrize("mode", list(RoutingMode))
@pytest.mark.parametrize("role", ["slm", "llm"])
def test_single_policy_equals_model_alone(pair: ModelPair, prompts, role: str, mode: RoutingMode) -> None:
    policy = AlwaysSLM() if role == "slm" else AlwaysLLM()
    backend = pair.slm if role == "slm" else pair.llm
    params = SamplingParams(max_tokens=48)
    gens = pair.generate(policy, prompts, [params] * len(prompts), mode)
    for prompt, gen in zip(prompts, gens):
        want = hf_greedy(backend.model, prompt, 48, pair.tokenizer.eos_token_id)
        assert_same_or_tie(backend.model, prompt, gen.token_ids, want)
        assert all(s == Source(role) for s in gen.sources)


def test_routed_tokens_come_from_the_right_model(pair: ModelPair, prompts) -> None:
    """Every token equals the argmax of the model that wrote it, recomputed from scratch on the prefix;
    the lazy LLM needs exactly one pass per routed token."""
    gens = pair.generate(RandomPolicy(rate=0.3, seed=1), prompts[:3], [SamplingParams(max_tokens=24)] * 3,
                         RoutingMode.SEQUENTIAL)
    for prompt, gen in zip(prompts, gens):
        assert 0 < gen.stats.llm_tokens < len(gen.token_ids), "a mixed routing"
        assert gen.stats.llm_passes == gen.stats.llm_tokens
        for i, (tok, src) in enumerate(zip(gen.token_ids, gen.sources)):
            model = (pair.llm if src == Source.LLM else pair.slm).model
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([prompt + gen.token_ids[:i]])).logits[0, -1]
            assert logits[tok] >= logits.max() - TIE_MARGIN, f"token {i} is not the {src.value}'s argmax"


def test_batched_equals_alone(pair: ModelPair, prompts) -> None:
    policy = RandomPolicy(rate=0.3, seed=2)
    params = SamplingParams(max_tokens=32)
    batched = pair.generate(policy, prompts, [params] * len(prompts))
    for i, prompt in enumerate(prompts[:3]):
        # the random policy keys on the request index, so the lone request must use the same key
        alone = generate_sequential(pair.slm, pair.llm, policy, [prompt], [params], pair.stop_rule(), stream_keys=[i])
        assert alone[0].token_ids == batched[i].token_ids


@pytest.mark.parametrize("mode", list(RoutingMode))
def test_temperature_zero_is_greedy_and_seed_reproduces(pair: ModelPair, prompts, mode: RoutingMode) -> None:
    policy = RandomPolicy(rate=0.3, seed=3)
    greedy = pair.generate(policy, prompts[:2], [SamplingParams(max_tokens=32)] * 2, mode)
    zero = pair.generate(policy, prompts[:2], [SamplingParams(max_tokens=32, temperature=0.0, top_p=0.5, top_k=3,
                                                              seed=9)] * 2, mode)
    assert [g.token_ids for g in greedy] == [g.token_ids for g in zero]
    hot = [SamplingParams(max_tokens=32, temperature=1.5, seed=11)] * 2
    a, b = pair.generate(policy, prompts[:2], hot, mode), pair.generate(policy, prompts[:2], hot, mode)
    assert [g.token_ids for g in a] == [g.token_ids for g in b], "a fixed seed reproduces"
    other = pair.generate(policy, prompts[:2], [SamplingParams(max_tokens=32, temperature=1.5, seed=12)] * 2, mode)
    assert [g.token_ids for g in a] != [g.token_ids for g in other], "another seed gives another sample"


@pytest.mark.parametrize("mode", list(RoutingMode))
def test_stops_on_eos_stop_string_and_max_tokens(pair: ModelPair, prompts, mode: RoutingMode) -> None:
    eos = pair.tokenizer.eos_token_id
    full = pair.generate(AlwaysLLM(), prompts[:1], [SamplingParams(max_tokens=200)], mode)[0]
    assert full.finish_reason == FinishReason.STOP and full.token_ids[-1] == eos
    assert "<|end|>" not in full.text
    cut = pair.generate(AlwaysLLM(), prompts[:1], [SamplingParams(max_tokens=200, stop=("####",))], mode)[0]
    assert cut.finish_reason == FinishReason.STOP and "####" not in cut.text
    assert full.text.startswith(cut.text) and len(cut.text) < len(full.text)
    short = pair.generate(AlwaysLLM(), prompts[:1], [SamplingParams(max_tokens=5)], mode)[0]
    assert short.finish_reason == FinishReason.LENGTH and len(short.token_ids) == 5
    assert short.token_ids == full.token_ids[:5]
