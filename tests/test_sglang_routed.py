"""Routed decoding on an all-SGLang testbed pair with the learned router: greedy speculative (whole blocks drafted
in one engine call) token-for-token equal to the HF backend's routed output on 50 held-out prompts per family, and
to SGLang's own sequential routing on 8 per family (sequential mode calls the engines once per token, and
SGLang's CPU attention recomputes a sequence's whole attention matrix on every call: the slowest part here). A
difference is allowed only at a float tie (the writer's two top log-probs within 1e-4, or a router score within
1e-4 of the threshold); each one is reported as a warning."""
from __future__ import annotations

import warnings

import pytest
import torch

from r2r.serving.decoding.routed import generate_sequential, generate_speculative
from r2r.serving.decoding.sampling import SamplingParams

pytestmark = pytest.mark.sglang

N_PER_FAMILY = 50
N_SEQUENTIAL_PER_FAMILY = 8
CHUNK = 50  # prompts decoded together (the CPU engines' KV pool holds 50 of them with room to spare)
TIE = 1e-4


def tie_margin(hf_pair, prompt: list[int], a, b, threshold: float) -> tuple[int, float, str]:
    """Where two outputs first differ, and how close a call it was there, by the HF reference: the distance of
    the router's score from the threshold where the writers differ, else the gap between the two tokens'
    log-probs under the model that wrote them."""
    i = next(j for j, (x, y) in enumerate(zip(a.token_ids + [-1], b.token_ids + [-1])) if x != y)
    if i >= min(len(a.token_ids), len(b.token_ids)):
        return i, float("inf"), "one output stops where the other goes on"
    if a.sources[i] != b.sources[i]:
        return i, abs(a.scores[i] - threshold), f"router score {a.scores[i]:.6f} vs threshold {threshold:.6f}"
    model = hf_pair.llm if a.sources[i].value == "llm" else hf_pair.slm
    (seq, out), = model.open([prompt + a.token_ids[:i]])
    model.close(seq)
    lp = torch.log_softmax(out.logits[-1].float(), -1)
    x, y = a.token_ids[i], b.token_ids[i]
    return i, abs(float(lp[x] - lp[y])), f"{a.sources[i].value} log-probs of {x} and {y}"


def compare(hf_pair, prompts, left, right, what: str, threshold: float) -> list[str]:
    ties = []
    for k, (prompt, a, b) in enumerate(zip(prompts, left, right)):
        if a.token_ids == b.token_ids:
            assert a.sources == b.sources, f"{what}, prompt {k}: same tokens from different models"
            continue
        i, margin, where = tie_margin(hf_pair, prompt, a, b, threshold)
        assert margin < TIE, f"{what}, prompt {k}: outputs differ at token {i} ({where}: {margin:.2e}), not a tie"
        ties.append(f"{what}, prompt {k}, token {i}: {where} differ by {margin:.2e}")
    return ties


@pytest.fixture(scope="module")
def routed(sglang_pair, hf_pair) -> dict:
    """Prompts, and the SGLang pair's speculative outputs and the HF pair's (the reference), greedy, 200 tokens."""
    from r2r.testbed.splits import heldout

    problems = heldout("math", "validation", N_PER_FAMILY) + heldout("code", "validation", N_PER_FAMILY)
    prompts = [hf_pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]
    params = [SamplingParams(max_tokens=200)] * len(prompts)
    policy = sglang_pair.learned_policy()
    assert policy.threshold == hf_pair.learned_policy().threshold
    spec, reference = [], []
    for start in range(0, len(prompts), CHUNK):
        chunk, ps = prompts[start : start + CHUNK], params[start : start + CHUNK]
        spec += generate_speculative(sglang_pair.slm, sglang_pair.llm, policy, chunk, ps, sglang_pair.stop_rule())
        reference += generate_speculative(hf_pair.slm, hf_pair.llm, hf_pair.learned_policy(), chunk, ps,
                                          hf_pair.stop_rule())
    return {"prompts": prompts, "params": params, "spec": spec, "reference": reference, "policy": policy}


def report(ties: list[str], limit: int) -> None:
    for tie in ties:
        warnings.warn(tie)
    assert len(ties) <= limit, f"{len(ties)} float ties is suspicious: {ties}"


def test_sglang_routed_equals_hf_routed(routed, hf_pair, sglang_pair) -> None:
    ties = compare(hf_pair, routed["prompts"], routed["reference"], routed["spec"], "HF vs SGLang speculative",
                   routed["policy"].threshold)
    assert sum(g.stats.llm_tokens for g in routed["spec"]) > 0, "the router must send some tokens to the LLM"
    assert all(g.stats.blocks > 0 for g in routed["spec"])
    assert sglang_pair.slm.open_sequences == sglang_pair.llm.open_sequences == 0
    report(ties, 5)


def test_sglang_speculative_equals_sequential(routed, hf_pair, sglang_pair) -> None:
    n = N_SEQUENTIAL_PER_FAMILY
    pick = list(range(n)) + list(range(N_PER_FAMILY, N_PER_FAMILY + n))
    prompts = [routed["prompts"][i] for i in pick]
    spec = [routed["spec"][i] for i in pick]
    seq = generate_sequential(sglang_pair.slm, sglang_pair.llm, routed["policy"], prompts,
                              [routed["params"][i] for i in pick], sglang_pair.stop_rule())
    for a, b in zip(seq, spec):
        assert b.stats.llm_passes <= a.stats.llm_passes, "never more LLM passes than sequential routing"
    assert sum(g.stats.llm_tokens for g in seq) > 0, "the router must send some tokens to the LLM"
    report(compare(hf_pair, prompts, seq, spec, "SGLang sequential vs speculative", routed["policy"].threshold), 2)
