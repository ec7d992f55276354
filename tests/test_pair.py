"""Pair loading: mismatched tokenizers and models are clear errors; different tokenizers make a cross pair."""
from __future__ import annotations

import pytest

from r2r.serving.pair import BackendChoice, PairSpec, load_pair, resolve_pair

from .conftest import make_tiny_model


def test_tokenizer_larger_than_model_vocab_is_rejected(tmp_path, tiny_models) -> None:
    small_vocab = make_tiny_model(tmp_path / "small", "llama", vocab=100)
    with pytest.raises(ValueError, match="do not belong together"):
        load_pair(PairSpec("x", small_vocab, tiny_models["llama"]), "cpu")


def test_different_tokenizers_make_a_cross_tokenizer_pair(tmp_path, tiny_models) -> None:
    from transformers import AutoTokenizer

    other = make_tiny_model(tmp_path / "other", "llama", vocab=513)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(other)
    pair = load_pair(PairSpec("x", tiny_models["llama"], other), "cpu")
    assert pair.cross and len(pair.llm_tokenizer) == 513
    assert not load_pair(PairSpec("y", tiny_models["llama"], tiny_models["llama_b"]), "cpu").cross
    with pytest.raises(ValueError, match="full next-token distributions"):
        load_pair(PairSpec("x", tiny_models["llama"], other), "cpu", BackendChoice("sglang"))


def test_resolve_pair_errors() -> None:
    with pytest.raises(ValueError, match="unknown pair"):
        resolve_pair("nope", None, None)
    with pytest.raises(ValueError, match="both"):
        resolve_pair(None, "/a", None)


def test_testbed_x_preset_routes_across_tokenizers_with_its_own_router(testbed_dirs) -> None:
    pair = load_pair(resolve_pair("testbed-x", None, None), "cpu")
    assert pair.cross and pair.spec.router.name == "router-x"
    router = pair.learned_policy()  # checked against the SLM's fingerprint on load
    assert router.threshold != load_pair(resolve_pair("testbed", None, None), "cpu").learned_policy().threshold
