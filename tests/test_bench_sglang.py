"""`r2r bench sglang`'s measurements, on fake backends (the bench itself runs SGLang: `make bench-sglang`): the
one-token calls alternate and leave nothing open, and the routed grid reports every configuration, the LLM share
and whether the configurations agree token for token."""
from __future__ import annotations

from r2r.router.policies import RandomPolicy
from r2r.evals.bench.sglang_cpu import BackendPair, SGLangBenchConfig, one_token_calls_ms, per_call, routed
from r2r.serving.decoding.stopping import StopRule

from .fakes import FakeBackend


def test_one_token_calls_alternate_and_close() -> None:
    a, b = FakeBackend(11, seed=3), FakeBackend(11, seed=3)
    a_ms, b_ms = one_token_calls_ms(a, b, [1, 2, 3], calls=5)
    assert len(a_ms) == len(b_ms) == 5 and min(a_ms + b_ms) > 0
    assert a.forward_passes == b.forward_passes == 6, "one open and five one-token extends each"
    assert a.open_sequences == b.open_sequences == 0
    stats = per_call(BackendPair("x", a, FakeBackend(11, seed=4)), BackendPair("y", b, FakeBackend(11, seed=4)),
                     [1, 2], calls=3)
    assert set(stats) == {"slm", "llm"} and stats["slm"]["sglang_over_hf"] > 0


def test_routed_grid_reports_every_configuration_and_agreement() -> None:
    rule = StopRule(frozenset({10}), lambda ids: "", 64)
    same = [BackendPair(name, FakeBackend(11, seed=3), FakeBackend(11, seed=4)) for name in ("hf", "sglang")]
    cfg = SGLangBenchConfig(batch_sizes=(1, 3), max_tokens=12, rounds=2)
    result = routed(same, RandomPolicy(rate=0.3, seed=5), [[1, 2], [3, 4]], rule, cfg)
    for batch in ("batch_1", "batch_3"):
        entry = result[batch]
        assert entry["same_tokens"] is True
        assert {k for k in entry if k != "same_tokens"} == {"hf_per_token", "hf_per_block", "sglang_per_token",
                                                            "sglang_per_block"}
        assert all(0 < v["llm_share"] < 1 and v["tokens_per_s"] > 0 for k, v in entry.items() if k != "same_tokens")
    other = [same[0], BackendPair("sglang", FakeBackend(11, seed=3), FakeBackend(11, seed=9))]
    assert routed(other, RandomPolicy(rate=0.3, seed=5), [[1, 2]], rule, cfg)["batch_1"]["same_tokens"] is False
