"""The transformers backend and routed decoding on a GPU (marker `gpu`): the contract's equivalences and
speculative = sequential routing on the testbed pair, on the device. `R2R_TEST_DEVICE=cpu` runs the same
tests on the CPU (what `scripts/gpu_check.sh --device cpu --quick` does so that they cannot rot)."""
from __future__ import annotations

import os

import pytest
import torch

from tests.test_backend_conformance import conformance

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("R2R_TEST_DEVICE", "cuda")
N_PROMPTS = int(os.environ.get("R2R_TEST_PROMPTS", "24"))
TIE_MARGIN = 2e-2  # on a GPU reductions reorder: near-ties may break the other way, bf16-free but not bitwise


@pytest.fixture(scope="module", autouse=True)
def needs_device() -> None:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA (or R2R_TEST_DEVICE=cpu)")


def test_hf_backend_conforms_on_device(tiny_models) -> None:
    from r2r.serving.backends.hf import HFBackend

    for arch in ("llama", "qwen2", "gemma3"):
        conformance(HFBackend(tiny_models[arch], DEVICE))


def test_speculative_equals_sequential_on_device(testbed_dirs) -> None:
    from r2r.serving.decoding.sampling import SamplingParams
    from r2r.serving.decoding.routed import generate_sequential
    from r2r.serving.decoding.routed import generate_speculative
    from r2r.serving.pair import PairSpec, load_pair
    from r2r.testbed.splits import heldout

    pair = load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"]), DEVICE)
    problems = heldout("math", "validation", N_PROMPTS // 2) + heldout("code", "validation", N_PROMPTS // 2)
    prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]
    policy = pair.learned_policy()
    params = [SamplingParams(max_tokens=120)] * len(prompts)
    seq = generate_sequential(pair.slm, pair.llm, policy, prompts, params, pair.stop_rule())
    spec = generate_speculative(pair.slm, pair.llm, policy, prompts, params, pair.stop_rule())
    differ = [i for i, (a, b) in enumerate(zip(seq, spec)) if a.token_ids != b.token_ids]
    for i in differ:  # only a float near-tie (model logits or router score at its threshold) may tell them apart
        a, b = seq[i], spec[i]
        j = next(k for k, (x, y) in enumerate(zip(a.token_ids + [-1], b.token_ids + [-1])) if x != y)
        if a.sources[j] != b.sources[j]:
            margin = abs(a.scores[j] - policy.threshold)
        else:
            model = pair.llm if a.sources[j].value == "llm" else pair.slm
            with torch.inference_mode():
                ids = torch.tensor([prompts[i] + a.token_ids[:j]], device=model.device)
                logits = model.model(input_ids=ids).logits[0, -1].float()
            margin = abs(float(logits[a.token_ids[j]] - logits[b.token_ids[j]]))
        assert margin < TIE_MARGIN, f"prompt {i} differs at token {j} with margin {margin:.2e}: not a tie"
    assert len(differ) <= max(1, len(prompts) // 8), f"{len(differ)} of {len(prompts)} outputs differ"
