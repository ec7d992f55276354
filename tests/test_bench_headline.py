"""The headline benchmark on a tiny random pair: its JSON shape, lossless means identical, bad flags."""
from __future__ import annotations

import subprocess
import sys

import pytest

from r2r.evals.bench.headline import Config, HeadlineConfig, bench_headline
from r2r.evals.bench.split_bound import TokenSplit
from r2r.evals.bench.step_costs import ProbeConfig
from r2r.testbed.splits import heldout
from r2r.testbed.tokenizer import chat_text
from r2r.router.policies import AlwaysSLM, RandomPolicy
from r2r.serving.pair import PairSpec, load_pair
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import generate_sequential

FIELDS = {"accuracy", "ci95", "tokens_per_s", "llm_share", "llm_passes_per_token"}


@pytest.fixture(scope="module")
def result_and_pair(tiny_models):
    pair = load_pair(PairSpec("tiny", tiny_models["llama"], tiny_models["llama_b"]), "cpu")
    cfg = HeadlineConfig(n_problems=5, batch_sizes=(1, 3), chunk=2, warmup_problems=1, max_tokens=6,
                         probe=ProbeConfig(repeats=2, catchup_tokens=3))
    families = {f: (heldout(f, "test", 6)[1:], heldout(f, "test", 1)) for f in ("math", "code")}

    def encode(problem):
        return list(pair.tokenizer(chat_text(problem.prompt))["input_ids"])

    splits = {"math": TokenSplit(identical=0.89, neutral=0.06, divergent=0.05)}
    return (bench_headline(pair, RandomPolicy(rate=0.3, seed=1), families, cfg, encode, splits=splits), pair,
            families, encode)


def test_shape(result_and_pair) -> None:
    result, *_ = result_and_pair
    assert set(result) == {"math", "code", "meta"}
    for family in ("math", "code"):
        assert set(result[family]) == {"batch_1", "batch_3"}
        for entry in result[family].values():
            assert set(entry) == {c.value for c in Config}
            for name, run in entry.items():
                assert FIELDS <= set(run), f"{name} lacks {FIELDS - set(run)}"
                assert run["tokens_per_s"] > 0 and 0.0 <= run["llm_share"] <= 1.0
            assert entry["llm_alone"]["llm_share"] == 1.0 and entry["slm_alone"]["llm_share"] == 0.0
            assert entry["slm_alone"]["llm_passes_per_token"] == 0.0
    meta = result["meta"]
    assert set(meta["pass_costs_by_family"]) == {"math", "code"}  # probed right after each family's runs
    for batch in ("batch_1", "batch_3"):
        costs = meta["pass_costs"][batch]
        assert {"slm_step_ms", "router_ms", "llm_step_ms", "llm_catchup_ms_per_token", "slm_step_in_run_ms",
                "router_in_run_ms"} <= set(costs)
        assert set(meta["bounds"][batch]) == {f"{f}/{c}" for f in ("math", "code")
                                              for c in ("routed_sequential", "routed_speculative",
                                                        "lossless_speculative")}
    assert {"slm_bare_forward_ms", "router_over_slm_step", "llm_step_over_slm_step_plus_router"} <= set(
        meta["step_overhead_batch_1"])
    assert set(meta["split"]) == {"math"}, "a split only where its labels were given"
    split = meta["split"]["math"]
    assert split["split"]["neutral_of_mismatches"] == pytest.approx(0.06 / 0.11)
    assert split["bound_perfect_router"]["precision"] == pytest.approx(1.0)
    assert split["bound_at_measured_share"]["flag_rate"] == result["math"]["batch_1"]["routed_speculative"]["llm_share"]
    assert split["measured_routed_over_lossless"] == pytest.approx(
        result["math"]["batch_1"]["routed_speculative"]["tokens_per_s"]
        / result["math"]["batch_1"]["lossless_speculative"]["tokens_per_s"])


def test_lossless_is_the_llm_alone(result_and_pair) -> None:
    """Lossless speculative decoding gives the LLM's own greedy tokens; the LLM alone is checked against an
    independent run of the sequential decoder with the LLM as its only model."""
    result, pair, families, encode = result_and_pair
    for family, (problems, _) in families.items():
        prompts = [encode(p) for p in problems]
        reference = generate_sequential(pair.llm, pair.llm, AlwaysSLM(), prompts,
                                        [SamplingParams(max_tokens=6)] * len(prompts), pair.stop_rule())
        for entry in result[family].values():
            assert entry["lossless_speculative"]["identical_to_llm_alone"], f"{family}: lossless changed the output"
            assert entry["routed_speculative"]["identical_to_sequential"], f"{family}: speculative != sequential"
            assert entry["llm_alone"]["output_tokens"] == sum(len(g.token_ids) for g in reference)
            assert entry["lossless_speculative"]["accuracy"] == entry["llm_alone"]["accuracy"]


@pytest.mark.parametrize("args, fragment", [
    (["--n", "0"], "--n must be at least 1"),
    (["--families", "math,poetry"], "unknown testbed families"),
    (["--batch-sizes", "1,0"], "batch sizes must be positive"),
    (["--batch-sizes", "1,x"], "--batch-sizes must be comma-separated numbers"),
    (["--batch-sizes", "1.5"], "--batch-sizes must be positive integers"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1"),
])
def test_bad_flags_are_one_line_exit_2(args: list[str], fragment: str, tmp_path) -> None:
    cli = [sys.executable, "-c", "from r2r.cli import main_entry; main_entry()"]
    proc = subprocess.run([*cli, "bench", "headline", *args, "--out", str(tmp_path / "h.json")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
