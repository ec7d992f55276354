"""The split bound against a simulation: blocks of a speculative run end at independent stops or at k_max, and
the LLM passes per token are counted over a long run."""
from __future__ import annotations

import random

import pytest

from r2r.evals.bench.split_bound import TokenSplit, passes_per_token, routed_over_lossless_bound, split_meta


def simulated_passes_per_token(rate: float, k_max: int, tokens: int, seed: int) -> float:
    rng, passes, n = random.Random(seed), 0, 0
    while n < tokens:
        passes += 1
        for _ in range(k_max):
            n += 1
            if rng.random() < rate:
                break
    return passes / n


@pytest.mark.parametrize("rate,k_max", [(0.0, 16), (0.05, 16), (0.11, 16), (0.3, 4), (1.0, 8)])
def test_passes_per_token_matches_simulation(rate: float, k_max: int) -> None:
    assert passes_per_token(rate, k_max) == pytest.approx(simulated_passes_per_token(rate, k_max, 200_000, 7),
                                                          rel=0.02)


def test_split_from_label_summary_and_the_free_draft_limit() -> None:
    split = TokenSplit.from_label_summary({"tokens": 1000, "mismatches": 110, "neutral": 55, "divergent": 50,
                                          "unverifiable": 5})
    fractions = split.as_dict()
    assert fractions["identical"] + fractions["mismatch"] == pytest.approx(1.0)
    assert fractions["neutral_of_mismatches"] == pytest.approx(0.5)
    bound = routed_over_lossless_bound(split, flag_rate=0.05 / 0.8, draft_ms=0.0, llm_pass_ms=10.0, k_max=10**6)
    assert bound["routed_over_lossless"] == pytest.approx(0.11 * 0.8 / 0.05, rel=1e-6)
    assert bound["limit_free_drafts"] == pytest.approx(0.11 * 0.8 / 0.05) and bound["precision"] == pytest.approx(0.8)
    costly = routed_over_lossless_bound(split, flag_rate=0.05 / 0.8, draft_ms=2.0, llm_pass_ms=10.0, k_max=16)
    assert 1.0 < costly["routed_over_lossless"] < bound["routed_over_lossless"], "drafting and the cap cost headroom"
    with pytest.raises(ValueError):
        routed_over_lossless_bound(split, flag_rate=0.04, draft_ms=1.0, llm_pass_ms=1.0, k_max=4)
    meta = split_meta(split, measured_share=0.03, draft_ms=1.0, llm_pass_ms=10.0, k_max=16)
    assert meta["bound_at_measured_share"] is None, "a share below the divergent rate cannot catch every one"
    assert meta["bound_perfect_router"]["precision"] == pytest.approx(1.0)
