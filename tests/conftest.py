"""Shared fixtures: tiny random models of several architectures (fakes first) and the testbed pair."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub: fail fast instead of waiting on one
import torch

from r2r.serving.backends.shared_body import materialize_weights

REPO = Path(__file__).resolve().parents[1]
TESTBED = REPO / "models" / "testbed"
TOKENIZER_DIR = TESTBED / "tokenizer"


def _tiny_config(arch: str, vocab: int, positions: int = 256):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma3":  # a 4-token sliding window so batched/cached passes cross it
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=4,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    raise ValueError(arch)


def make_tiny_model(path: Path, arch: str, seed: int = 0, vocab: int | None = None, positions: int = 256) -> Path:
    """A randomly initialised model of `arch` saved with the testbed tokenizer (context: `positions` tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny_config(arch, vocab or len(tok), positions))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    models = {arch: make_tiny_model(root / arch, arch) for arch in ("llama", "qwen2", "gemma3")}
    models["llama_b"] = make_tiny_model(root / "llama_b", "llama", seed=1)  # a second model, same tokenizer
    return models


@pytest.fixture(scope="session")
def testbed_dirs() -> dict[str, Path]:
    dirs = {"slm": TESTBED / "slm", "llm": TESTBED / "llm", "router": TESTBED / "router"}
    for role in ("slm", "llm"):
        materialize_weights(dirs[role])
        assert (dirs[role] / "model.safetensors").exists(), f"testbed {role} weights missing at {dirs[role]}"
    return dirs


def _converted_or_skip(convert, what: str) -> Path:
    """A real model's HF directory, or skip the test when its weight package is not installed."""
    try:
        return convert()
    except FileNotFoundError as exc:
        pytest.skip(f"{what} weights not installed: {exc}")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from r2r.serving.real_models import smollm2_dir

    return _converted_or_skip(smollm2_dir, "SmolLM2")


@pytest.fixture(scope="session")
def gemma3_dir() -> Path:
    from r2r.serving.real_models import gemma3_dir

    return _converted_or_skip(gemma3_dir, "Gemma 3 (r2r models fetch smol-gemma)")


# -- SGLang (`make test-sglang`: its own venv, a CPU here through tests/sglang_stub, a GPU where there is one) --

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start SGLang engines of their own (a server) run first, before the shared engines below start:
    never four engines in memory at once (about 3 GB each on a CPU). Stable: everything else keeps its order."""
    items.sort(key=lambda item: not item.get_closest_marker("sglang_own_engines"))


@pytest.fixture(scope="session")
def sglang_pair(testbed_dirs):
    """The testbed pair on two SGLang engines (float32, as the HF backend runs), started once for every test."""
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        pytest.skip("sglang is not installed in this Python: `make test-sglang` runs these tests in .venv-sglang")
    from transformers import AutoTokenizer

    from r2r.serving.backends.sglang import SGLangBackend, SGLangConfig, SGLangDevice
    from r2r.serving.pair import ModelPair, PairSpec

    device = SGLangDevice.CUDA if torch.cuda.is_available() else SGLangDevice.CPU
    slm = SGLangBackend(SGLangConfig(str(testbed_dirs["slm"]), device=device, dtype="float32",
                                     mem_fraction_static=0.15))
    llm = SGLangBackend(SGLangConfig(str(testbed_dirs["llm"]), device=device, dtype="float32",
                                     mem_fraction_static=0.3))
    spec = PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"])
    yield ModelPair(spec, slm, llm, AutoTokenizer.from_pretrained(testbed_dirs["slm"]))
    slm.shutdown()
    llm.shutdown()


@pytest.fixture(scope="session")
def hf_pair(testbed_dirs):
    """The testbed pair on the HF backend (the reference the SGLang backend is compared with)."""
    from r2r.serving.pair import PairSpec, load_pair

    spec = PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"])
    return load_pair(spec, "cuda" if torch.cuda.is_available() else "cpu")
