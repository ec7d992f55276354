"""`r2r bench serve` against a real server process: what it counts is what the pair generates, and the offline
engine it compares the server with decodes the same requests to the same tokens."""
from __future__ import annotations

import pytest

from r2r.evals.bench.serve import ServeBenchConfig, bench_serve
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.pair import PairSpec, load_pair
from r2r.serving.decoding.sampling import SamplingParams

PROMPTS = ["Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?",
           "Cara has 7 coins. Cara gives away 3 coins. How many coins does Cara have now?",
           "x = 4\nprint(x * 3)"]


def test_bench_serve_counts_every_token_the_pair_generates(testbed_dirs) -> None:
    cfg = ServeBenchConfig(concurrency=(1, 3), requests_per_client=2, min_requests=3, max_tokens=24,
                           warmup_requests=1)
    pair = load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"]), "cpu")
    result = bench_serve(["--pair", "testbed"], PROMPTS, cfg, lambda: pair)

    gens = pair.generate(pair.policy(pair.default_policy), [pair.encode_chat([{"role": "user", "content": p}])
                                                            for p in PROMPTS],
                         [SamplingParams(max_tokens=24, temperature=0)] * 3, RoutingMode.SPECULATIVE)
    lengths, llm = [len(g.token_ids) for g in gens], [g.stats.llm_tokens for g in gens]
    assert sum(llm) > 0, "the reference must route some tokens for the share to be checked"
    for c, n in ((1, 3), (3, 6)):
        row = result[f"concurrency_{c}"]
        assert row["requests"] == n and row["errors"] == 0
        assert row["output_tokens"] == sum(lengths[i % 3] for i in range(n))
        assert row["llm_share"] == round(sum(llm[i % 3] for i in range(n)) / row["output_tokens"], 4)
        assert 0 < row["p50_ms"] <= row["p95_ms"]
    assert result["scaling"] == pytest.approx(result["concurrency_3"]["tokens_per_s"]
                                              / result["concurrency_1"]["tokens_per_s"], abs=0.01)
    offline = result["offline_batch_3"]
    assert offline["requests"] == 6 and offline["output_tokens"] == result["concurrency_3"]["output_tokens"], \
        "the offline engine decodes the server's requests to the same tokens"
    assert result["offline_batch_3_tokens_per_s"] == offline["tokens_per_s"] > 0
    assert result["server_over_offline"] == pytest.approx(result["concurrency_3"]["tokens_per_s"]
                                                          / offline["tokens_per_s"], abs=0.001)


def test_bench_serve_stops_on_a_failed_warmup(testbed_dirs) -> None:
    cfg = ServeBenchConfig(concurrency=(1,), max_tokens=100_000, warmup_requests=1)  # beyond the context: 400
    with pytest.raises(ValueError, match="warm-up"):
        bench_serve(["--pair", "testbed"], PROMPTS, cfg)
