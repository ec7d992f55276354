"""Speculative routing against sequential routing: same tokens (greedy), same distribution (sampling),
never more LLM passes."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from r2r.router.policies import ConfidencePolicy, RandomPolicy, RouteInput, flags
from r2r.router.rows import RowKind
from r2r.serving.decoding.sampling import SamplingParams, processed_probs
from r2r.serving.decoding.routed import generate_sequential, generate_speculative
from r2r.serving.decoding.engine import BlockConfig
from r2r.serving.decoding.stopping import StopRule

from .fakes import FakeBackend

VOCAB, EOS, MAX_TOKENS = 5, 4, 3


def toy_rule() -> StopRule:
    return StopRule(frozenset({EOS}), lambda ids: "".join(map(str, ids)), 64)


def exact_sequential_distribution(slm: FakeBackend, llm: FakeBackend, policy, prompt: list[int],
                                  params: SamplingParams) -> dict[tuple[int, ...], float]:
    """Brute force: every token sequence up to MAX_TOKENS (or EOS) with its sequential-routing probability."""
    out: dict[tuple[int, ...], float] = {}

    def walk(prefix: list[int], prob: float) -> None:
        if prefix and (prefix[-1] == EOS or len(prefix) == MAX_TOKENS):
            out[tuple(prefix)] = out.get(tuple(prefix), 0.0) + prob
            return
        slm_logits = slm.logits_for(prompt + prefix)
        at = RouteInput(slm_logits[None], None, [len(prompt) + len(prefix)], [0], RowKind.LOGITS)
        routed = flags(policy, at)[1][0]
        model = llm if routed else slm
        probs = processed_probs(model.logits_for(prompt + prefix), params)
        for tok in range(VOCAB):
            if probs[tok] > 0:
                walk(prefix + [tok], prob * float(probs[tok]))

    walk([], 1.0)
    return out


def pooled_cells(exact: dict, counts: Counter, n: int, min_expected: float = 5.0) -> tuple[list[float], list[float]]:
    """Chi-square cells: sequences with enough expected mass on their own, the rare ones pooled into one."""
    big = [s for s in sorted(exact) if exact[s] * n >= min_expected]
    rare = [s for s in exact if exact[s] * n < min_expected]
    observed = [counts.get(s, 0) for s in big] + ([sum(counts.get(s, 0) for s in rare)] if rare else [])
    expected = [exact[s] * n for s in big] + ([sum(exact[s] for s in rare) * n] if rare else [])
    assert len(big) >= 10, "enough cells for the test to have power"
    scale = sum(observed) / sum(expected)  # the enumeration sums to 1 up to float rounding
    return observed, [e * scale for e in expected]


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0),
                                    SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.9, top_k=4)])
def test_sampling_distribution_matches_sequential(params: SamplingParams) -> None:
    """Chi-square goodness of fit of 20k speculative samples against the enumerated sequential distribution,
    at significance 0.001 (a correct implementation fails this one time in a thousand)."""
    from scipy.stats import chisquare

    slm, llm = FakeBackend(VOCAB, seed=1, sharpness=1.0), FakeBackend(VOCAB, seed=2, sharpness=1.5)
    policy = ConfidencePolicy(threshold=0.55)
    prompt = [0, 1]
    exact = exact_sequential_distribution(slm, llm, policy, prompt, params)
    assert abs(sum(exact.values()) - 1.0) < 1e-6
    n = 20000
    gens = generate_speculative(slm, llm, policy, [prompt] * n,
                                [SamplingParams(**{**params.__dict__, "seed": i}) for i in range(n)], toy_rule(),
                                block=BlockConfig(k_min=2, k_max=3))
    counts = Counter(tuple(g.token_ids) for g in gens)
    assert set(counts) <= set(exact), f"impossible sequences sampled: {set(counts) - set(exact)}"
    observed, expected = pooled_cells(exact, counts, n)
    pvalue = chisquare(observed, expected).pvalue
    assert pvalue > 1e-3, f"speculative sampling differs from sequential routing (p = {pvalue:.2e})"
    mixed = sum(1 for g in gens if 0 < g.stats.llm_tokens < len(g.token_ids))
    assert mixed > n // 10, "the policy must route a real mix of positions for the test to mean anything"


def test_naive_sampling_would_fail_the_same_test() -> None:
    """The test has power: sampling flagged positions from the SLM (no correction) is rejected."""
    from scipy.stats import chisquare

    slm, llm = FakeBackend(VOCAB, seed=1, sharpness=1.0), FakeBackend(VOCAB, seed=2, sharpness=1.5)
    policy = ConfidencePolicy(threshold=0.55)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0)
    exact = exact_sequential_distribution(slm, llm, policy, [0, 1], params)
    slm_only = exact_sequential_distribution(slm, llm, ConfidencePolicy(threshold=1.0), [0, 1], params)
    n = 20000
    observed, expected = pooled_cells(exact, Counter({s: round(p * n) for s, p in slm_only.items()}), n)
    assert chisquare(observed, expected).pvalue < 1e-3


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_sequential_on_fakes(k: int) -> None:
    slm, llm = FakeBackend(11, seed=3), FakeBackend(11, seed=4)
    rule = StopRule(frozenset({10}), lambda ids: "", 64)
    prompts = [[i, i + 1] for i in range(40)]
    params = [SamplingParams(max_tokens=20)] * len(prompts)
    for policy in (RandomPolicy(rate=0.3, seed=5), ConfidencePolicy(threshold=0.5)):
        seq = generate_sequential(slm, llm, policy, prompts, params, rule)
        spec = generate_speculative(slm, llm, policy, prompts, params, rule, block=BlockConfig(k_min=k, k_max=k))
        for a, b in zip(seq, spec):
            assert a.token_ids == b.token_ids and a.sources == b.sources and a.finish_reason == b.finish_reason
            assert b.stats.llm_passes <= a.stats.llm_passes, "never more LLM passes than sequential routing"


def test_engine_mixes_modes_policies_and_late_joiners() -> None:
    """Continuous batching: requests of both modes and different policies, some joining mid-flight, each
    get exactly the tokens they get alone."""
    from r2r.serving.decoding.routed import RoutedEngine
    from r2r.serving.decoding.generation import RoutingMode

    slm, llm = FakeBackend(11, seed=3), FakeBackend(11, seed=4)
    rule = StopRule(frozenset({10}), lambda ids: "", 64)
    params = SamplingParams(max_tokens=15)
    policies = [RandomPolicy(rate=0.3, seed=5), ConfidencePolicy(threshold=0.5)]
    jobs = [([i, i + 2], policies[i % 2], list(RoutingMode)[i % 3 % 2], i) for i in range(9)]

    def alone(prompt, policy, mode, key):
        decode = generate_sequential if mode == RoutingMode.SEQUENTIAL else generate_speculative
        return decode(slm, llm, policy, [prompt], [params], rule, stream_keys=[key])[0].token_ids

    engine = RoutedEngine(slm, llm, rule)
    reqs = []
    for step in range(40):
        if step % 2 == 0 and len(reqs) < len(jobs):  # one request joins every other step
            prompt, policy, mode, key = jobs[len(reqs)]
            reqs += engine.add([prompt], [params], [policy], [mode], [key])
        if engine.active:
            engine.step()
    assert not engine.active and len(reqs) == len(jobs)
    for (prompt, policy, mode, key), r in zip(jobs, reqs):
        assert r.out.token_ids == alone(prompt, policy, mode, key), f"request {key} ({mode.value}) changed in a batch"


def test_a_request_joins_the_round_in_progress() -> None:
    """Continuous batching within a round: a request added two passes into an 8-draft round drafts from the
    next pass and is verified with the round (6 tokens), rather than waiting for the round to end."""
    from r2r.serving.decoding.routed import RoutedEngine
    from r2r.serving.decoding.generation import RoutingMode

    slm, llm = FakeBackend(11, seed=3), FakeBackend(11, seed=4)
    rule = StopRule(frozenset(), lambda ids: "", 64)
    params, policy = SamplingParams(max_tokens=15), RandomPolicy(rate=0.0, seed=5)
    engine = RoutedEngine(slm, llm, rule, BlockConfig(k_min=8, k_max=8))
    first = engine.add([[1, 2]], [params], [policy], [RoutingMode.SPECULATIVE], [0])[0]
    engine.step()
    engine.step()
    late = engine.add([[3, 4]], [params], [policy], [RoutingMode.SPECULATIVE], [1])[0]
    engine.step()
    assert len(late.drafts) == 1 and engine.drafting is not None
    while engine.drafting is not None:
        engine.step()
    assert (len(first.out.token_ids), len(late.out.token_ids)) == (8, 6)
    while engine.active:
        engine.step()
    for r, prompt, key in ((first, [1, 2], 0), (late, [3, 4], 1)):
        alone = generate_speculative(slm, llm, policy, [prompt], [params], rule, stream_keys=[key])[0]
        assert r.out.token_ids == alone.token_ids


def test_pass_cost_fit_recovers_the_fixed_and_per_token_parts() -> None:
    from r2r.serving.decoding.pass_costs import PassCost

    cost = PassCost(ema=0.2)
    for k in range(300):
        tokens = 1 + (7 * k) % 16
        cost.observe(tokens, 0.004 + 0.0005 * tokens)
    assert cost.fixed == pytest.approx(0.004, rel=1e-6) and cost.per_token == pytest.approx(0.0005, rel=1e-6)
    flat = PassCost()
    for _ in range(10):
        flat.observe(8, 0.01)
    assert flat.per_token == 0.0 and flat.fixed == pytest.approx(0.01), "one batch size: all of it is fixed"


def test_blocks_lengthen_when_llm_passes_are_expensive() -> None:
    """k from measured costs: a costly LLM pass (GPU-like) buys long blocks, a cheap one short blocks."""
    from r2r.serving.decoding.engine import BlockConfig
    from r2r.serving.decoding.pass_costs import PassCosts
    from r2r.serving.decoding.speculative import block_size, past_flag

    def costs(llm_fixed: float) -> PassCosts:
        c = PassCosts()
        for rows in (1, 4, 16):
            c.draft.observe(rows, 0.002 + 0.0002 * rows)
            c.llm.observe(rows * 4, llm_fixed + 0.0001 * rows * 4)
        return c

    r = SimpleNamespace(flag_rate=0.15, reject_rate=0.3)
    cfg = BlockConfig()
    assert block_size(r, cfg, costs(0.5), 1) == cfg.k_max
    assert block_size(r, cfg, costs(0.0001), 1) == cfg.k_min
    assert past_flag(r, 8, costs(0.5), 1) and not past_flag(r, 8, costs(0.0001), 1)
    assert not past_flag(r, 8, PassCosts(), 1), "unmeasured: stop at the flag, as sequential routing would"
    one_size = PassCosts()
    one_size.draft.observe(1, 0.002)
    one_size.llm.observe(100, 0.5)  # a prefill: one size only, its fixed part unknown
    assert not one_size.known and not past_flag(r, 8, one_size, 1)
