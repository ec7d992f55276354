"""Drafting a whole speculative block in one `Backend.draft` call (what the SGLang backend does in one engine
call): the contract's `draft` equals extending token by token, and greedy speculative routing with blocks
drafted that way gives sequential routing's tokens and sources, on fakes and on the testbed pair."""
from __future__ import annotations

import pytest

from r2r.router.policies import ConfidencePolicy, RandomPolicy
from r2r.serving.decoding.engine import BlockConfig, DraftCalls
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.decoding.routed import RoutedEngine, generate_sequential, generate_speculative
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.stopping import StopRule

from .fakes import FakeBackend

PER_BLOCK = DraftCalls.PER_BLOCK


def test_draft_refuses_to_pass_the_context(tiny_models) -> None:
    """(`draft` itself is in the backend conformance suite, tests/test_backend_conformance.py.)"""
    from r2r.serving.backends.hf import HFBackend

    backend = HFBackend(tiny_models["llama"])
    (seq, _), = backend.open([[7] * (backend.max_length - 6)])
    with pytest.raises(ValueError, match="context"):
        backend.draft([seq], [[4]], [6])  # the sixth draft would sit past the context
    backend.close(seq)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_per_block_greedy_equals_sequential_on_fakes(k: int) -> None:
    """Stops inside blocks (EOS id 10, a stop string, max_tokens 20) and rejections mid-block included."""
    slm, llm = FakeBackend(11, seed=3), FakeBackend(11, seed=4)
    rule = StopRule(frozenset({10}), lambda ids: " ".join(map(str, ids)), 64)
    prompts = [[i, i + 1] for i in range(40)]
    params = [SamplingParams(max_tokens=20, stop=("3 7",) if i % 3 == 0 else ()) for i in range(len(prompts))]
    block = BlockConfig(k_min=k, k_max=k, draft_calls=PER_BLOCK)
    for policy in (RandomPolicy(rate=0.3, seed=5), ConfidencePolicy(threshold=0.5)):
        seq = generate_sequential(slm, llm, policy, prompts, params, rule)
        spec = generate_speculative(slm, llm, policy, prompts, params, rule, block=block)
        for a, b in zip(seq, spec):
            assert a.token_ids == b.token_ids and a.sources == b.sources and a.finish_reason == b.finish_reason
            assert b.stats.llm_passes <= a.stats.llm_passes, "never more LLM passes than sequential routing"
        assert any(0 < g.stats.llm_tokens < len(g.token_ids) for g in spec), "the policy must route a mix"
    assert slm.open_sequences == 0 and llm.open_sequences == 0


def test_one_draft_call_per_round() -> None:
    """A round is one SLM call and at most one LLM call (two on a request's first meeting with the LLM)."""
    slm, llm = FakeBackend(11, seed=3), FakeBackend(11, seed=4)
    rule = StopRule(frozenset(), lambda ids: "", 64)
    engine = RoutedEngine(slm, llm, rule, BlockConfig(k_min=4, k_max=4, draft_calls=PER_BLOCK))
    reqs = engine.add([[1, 2], [3, 4]], [SamplingParams(max_tokens=12)] * 2, [RandomPolicy(rate=0.3, seed=5)] * 2,
                      [RoutingMode.SPECULATIVE] * 2, [0, 1])
    while engine.active:
        slm_calls, llm_calls = slm.forward_passes, llm.forward_passes
        engine.step()
        assert engine.drafting is None, "a per-block round ends within its step"
        assert llm.forward_passes - llm_calls <= 2
    # FakeBackend.draft extends token by token: n passes per call; SGLang's is one call (tests/sglang)
    assert all(r.out.stats.blocks >= 3 for r in reqs)


def test_per_block_mixes_with_sampling_and_late_joiners() -> None:
    """Greedy requests go a round per step, sampling ones a token per step, requests of both modes join
    mid-flight: each gets exactly the tokens it gets alone."""
    slm, llm = FakeBackend(11, seed=3), FakeBackend(11, seed=4)
    rule = StopRule(frozenset({10}), lambda ids: "", 64)
    block = BlockConfig(draft_calls=PER_BLOCK)
    policy = RandomPolicy(rate=0.3, seed=5)
    jobs = [([i, i + 2], SamplingParams(max_tokens=15, temperature=0.0 if i % 3 else 1.0, seed=i),
             list(RoutingMode)[i % 2], i) for i in range(9)]

    def alone(prompt, params, mode, key):
        decode = generate_sequential if mode == RoutingMode.SEQUENTIAL else generate_speculative
        kwargs = {} if mode == RoutingMode.SEQUENTIAL else {"block": block}
        return decode(slm, llm, policy, [prompt], [params], rule, stream_keys=[key], **kwargs)[0].token_ids

    engine = RoutedEngine(slm, llm, rule, block)
    reqs = []
    for step in range(60):
        if step % 2 == 0 and len(reqs) < len(jobs):
            prompt, params, mode, key = jobs[len(reqs)]
            reqs += engine.add([prompt], [params], [policy], [mode], [key])
        if engine.active:
            engine.step()
    assert not engine.active and len(reqs) == len(jobs)
    for (prompt, params, mode, key), r in zip(jobs, reqs):
        assert r.out.token_ids == alone(prompt, params, mode, key), f"request {key} changed in a batch"
    greedy_spec = [(p, s, m, k) for p, s, m, k in jobs if s.greedy and m == RoutingMode.SPECULATIVE]
    for prompt, params, _, key in greedy_spec:
        ref = generate_sequential(slm, llm, policy, [prompt], [params], rule, stream_keys=[key])[0].token_ids
        assert alone(prompt, params, RoutingMode.SPECULATIVE, key) == ref


def test_per_block_equals_sequential_on_the_testbed(testbed_dirs) -> None:
    """The learned router on the testbed pair (HF backend), blocks drafted per call: sequential's tokens."""
    from r2r.serving.pair import PairSpec, load_pair
    from r2r.testbed.splits import heldout

    pair = load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"]), "cpu")
    problems = heldout("math", "validation", 4) + heldout("code", "validation", 4)
    prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]
    policy, rule = pair.learned_policy(), pair.stop_rule()
    params = [SamplingParams(max_tokens=96)] * len(prompts)
    seq = generate_sequential(pair.slm, pair.llm, policy, prompts, params, rule)
    spec = generate_speculative(pair.slm, pair.llm, policy, prompts, params, rule,
                                block=BlockConfig(draft_calls=PER_BLOCK))
    for i, (a, b) in enumerate(zip(seq, spec)):
        assert a.token_ids == b.token_ids and a.sources == b.sources, f"prompt {i}: per-block drafting changed it"
    assert sum(g.stats.llm_tokens for g in spec) > 0, "the router must route some tokens for this to mean much"


class OneCallFake(FakeBackend):
    """The fake, declaring what SGLang declares: `draft` (here still extends) stands for one engine call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drafts_in_one_call = True


def test_single_model_greedy_decode_in_blocks_equals_per_token() -> None:
    """`serving.decoding.decode` on a backend that drafts in one call: blocks of `draft`, cut at EOS (10), stop
    strings and max_tokens mid-block: the per-token decode's tokens, log-probs and finish reasons."""
    from r2r.serving.decoding import decode

    rule = StopRule(frozenset({10}), lambda ids: " ".join(map(str, ids)), 64)
    prompts = [[i, i + 1] for i in range(30)]
    params = [SamplingParams(max_tokens=5 + 3 * (i % 17), logprobs=2, stop=("3 7",) if i % 4 == 0 else ())
              for i in range(len(prompts))]
    per_token = decode(FakeBackend(11, seed=3), prompts, params, rule)
    backend = OneCallFake(11, seed=3)
    in_blocks = decode(backend, prompts, params, rule)
    for a, b in zip(per_token, in_blocks):
        assert (a.token_ids, a.finish_reason, a.text) == (b.token_ids, b.finish_reason, b.text)
        assert a.logprobs == pytest.approx(b.logprobs) and len(a.top_logprobs) == len(b.top_logprobs)
    assert {g.finish_reason.value for g in in_blocks} >= {"stop", "length"}
    assert backend.open_sequences == 0
