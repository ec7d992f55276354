"""One conformance suite for every backend: the contract's equivalences checked on the backend's own outputs
(batched = one at a time, k at once = k singles, truncate + extend = fresh), comparing argmax and the top-k
log-probabilities so that backends returning only top-k (SGLang) are held to the same bar."""
from __future__ import annotations

import os

import pytest
import torch

PROMPTS = [[5, 17, 40, 41, 42, 7], [9, 9], [12, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]]
NEW = [[50], [51, 52, 53], [54, 55]]
K = 5


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    assert torch.equal(la.argmax(-1), lb.argmax(-1))
    torch.testing.assert_close(torch.topk(la, K, -1).values, torch.topk(lb, K, -1).values, atol=2e-3, rtol=0)


def declares_the_protocol(backend) -> None:
    """Every attribute the Backend protocol declares is set (callers read them directly, never with defaults)."""
    from typing import get_type_hints

    from serving.backends.base import Backend

    missing = [name for name in get_type_hints(Backend) if not hasattr(backend, name)]
    assert not missing, f"{type(backend).__name__} lacks {missing}"
    assert isinstance(backend.n_parameters, int) and backend.returned_top_k >= 1


def conformance(backend) -> None:
    declares_the_protocol(backend)
    opened = backend.open(PROMPTS)
    batched = backend.extend([s for s, _ in opened], NEW)
    for ids, new, b in zip(PROMPTS, NEW, batched):
        (seq, _), = backend.open([ids])
        same(b.logits, backend.extend([seq], [new])[0].logits)
    ids, new = PROMPTS[0], [60, 61, 62, 63]
    (a, _), (b, _) = backend.open([ids, ids])
    same(backend.extend([a], [new])[0].logits, torch.cat([backend.extend([b], [[t]])[0].logits for t in new]))
    backend.truncate(a, len(ids) + 1)
    (fresh, _), = backend.open([ids + new[:1]])
    same(backend.extend([a], [[70]])[0].logits, backend.extend([fresh], [[70]])[0].logits)


def test_hf_backend_conforms(tiny_models) -> None:
    from serving.backends.hf import HFBackend

    backend = HFBackend(tiny_models["qwen2"])
    conformance(backend)
    assert backend.n_parameters == sum(p.numel() for p in backend.model.parameters())
    assert backend.exact_full_distribution and backend.returned_top_k == backend.vocab_size


def test_test_fakes_declare_the_protocol() -> None:
    from tests.byte_oracle import TableLM
    from tests.fakes import FakeBackend

    declares_the_protocol(FakeBackend(vocab=8, seed=0))
    declares_the_protocol(TableLM(vocab_size=8, allowed=[1, 2], eos=0, context_len=1, max_new=2))


@pytest.mark.gpu
def test_sglang_backend_conforms() -> None:
    """Needs a GPU and sglang==0.5.23; R2R_SGLANG_MODEL names a small HF model directory (e.g. Qwen2.5-0.5B)."""
    torch_cuda = torch.cuda.is_available()
    model = os.environ.get("R2R_SGLANG_MODEL")
    if not torch_cuda or not model:
        pytest.skip("needs CUDA and R2R_SGLANG_MODEL")
    from serving.backends.sglang import SGLangBackend, SGLangConfig

    backend = SGLangBackend(SGLangConfig(model, mem_fraction_static=0.5, top_k=K))
    try:
        conformance(backend)
    finally:
        backend.shutdown()
