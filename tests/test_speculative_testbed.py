"""Speculative routing on the testbed pair with the learned router: token-identical to sequential
routing on 100 prompts, with explicit detection of float-noise ties."""
from __future__ import annotations

import pytest
import torch

from r2r.testbed.splits import heldout
from r2r.serving.pair import ModelPair, PairSpec, load_pair
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import generate_sequential, generate_speculative

TIE_MARGIN = 1e-4
N_PER_FAMILY = 50


@pytest.fixture(scope="module")
def pair(testbed_dirs) -> ModelPair:
    return load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"]), "cpu")


def first_difference_margin(pair: ModelPair, prompt: list[int], a, b) -> tuple[int, float]:
    """Where two outputs first differ and the logit margin there of the model that wrote the token;
    a margin below TIE_MARGIN means the two runs saw a float-noise tie, not a semantic difference.
    Router-score ties are reported the same way (distance of the score from the threshold)."""
    i = next(j for j, (x, y) in enumerate(zip(a.token_ids + [-1], b.token_ids + [-1])) if x != y)
    prefix = prompt + a.token_ids[:i]
    if a.sources[i] != b.sources[i]:
        return i, abs(a.scores[i] - pair.learned_policy().threshold)
    model = pair.llm if a.sources[i].value == "llm" else pair.slm
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([prefix])).logits[0, -1]
    return i, abs(float(logits[a.token_ids[i]] - logits[b.token_ids[i]]))


def test_speculative_equals_sequential_on_100_prompts(pair: ModelPair) -> None:
    problems = heldout("math", "validation", N_PER_FAMILY) + heldout("code", "validation", N_PER_FAMILY)
    prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]
    policy = pair.learned_policy()
    params = [SamplingParams(max_tokens=200)] * len(prompts)
    rule = pair.stop_rule()
    ties = []
    for start in range(0, len(prompts), 50):
        chunk = slice(start, start + 50)
        seq = generate_sequential(pair.slm, pair.llm, policy, prompts[chunk], params[chunk], rule)
        spec = generate_speculative(pair.slm, pair.llm, policy, prompts[chunk], params[chunk], rule)
        for prompt, a, b in zip(prompts[chunk], seq, spec):
            assert b.stats.llm_passes <= a.stats.llm_passes, "never more LLM passes than sequential routing"
            if a.token_ids == b.token_ids:
                assert a.sources == b.sources
                continue
            i, margin = first_difference_margin(pair, prompt, a, b)
            assert margin < TIE_MARGIN, f"outputs differ at token {i} with margin {margin:.2e}: not a float tie"
            ties.append(margin)
    assert len(ties) <= 3, f"{len(ties)} float-noise ties in 100 prompts is suspicious: {ties}"
