"""The public Python API on the testbed pair: what the README shows works and matches the CLI's engine."""
from __future__ import annotations

import pytest

import r2r
from r2r.serving.decoding.generation import Source
from r2r.serving.decoding.sampling import SamplingParams


@pytest.fixture(scope="module")
def pair() -> r2r.Pair:
    return r2r.load_pair("testbed", device="cpu")


def test_generate_returns_text_sources_and_stats(pair: r2r.Pair) -> None:
    prompt = "Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?"
    out = pair.generate([prompt], policy="learned", llm_share=0.1, max_tokens=40)
    assert len(out) == 1
    gen = out[0]
    assert gen.text and len(gen.sources) == len(gen.token_ids) <= 40
    assert gen.stats.llm_tokens == sum(s == Source.LLM for s in gen.sources)
    # the same request through the serving object: the API adds nothing but encoding and policy lookup
    mp = pair.model_pair
    ids = mp.encode_chat([{"role": "user", "content": prompt}])
    policy = mp.learned_policy().with_threshold(mp.learned_policy().threshold_for_share(0.1))
    direct = mp.generate(policy, [ids], [SamplingParams(max_tokens=40)])[0]
    assert direct.token_ids == gen.token_ids and direct.sources == gen.sources


def test_policies_and_bad_input(pair: r2r.Pair) -> None:
    slm_only = pair.generate(["What is 2 plus 3?"], policy="slm", max_tokens=8)[0]
    assert set(slm_only.sources) == {Source.SLM}
    with pytest.raises(ValueError, match="list of strings"):
        pair.generate("What is 2 plus 3?")
    with pytest.raises(ValueError):
        pair.generate(["x"], policy="nonsense")


def test_generate_from_several_threads(pair: r2r.Pair) -> None:
    """Concurrent callers share the backends' resident batches safely: each gets what it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["What is 2 plus 3?", "Ava has 12 apples. She eats 4. How many are left?", "x = 4\nprint(x * 3)",
               "Cara has 7 coins. Cara gives away 3 coins. How many coins does Cara have now?"]
    alone = [pair.generate([p], policy="entropy", max_tokens=24)[0].token_ids for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda p: pair.generate([p], policy="entropy", max_tokens=24)[0].token_ids,
                                 prompts * 2))
    assert together == alone * 2, "a concurrent caller changed another's output"
