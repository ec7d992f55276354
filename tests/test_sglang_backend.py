"""The SGLang backend against the HF backend on the testbed SLM and LLM (float32 both): the argmax at every
position, the top-k log-probabilities and the hidden states, for a prefill, a multi-token extend, one-token
extends and a drafted block. (The contract's own equivalences: tests/test_backend_conformance.py.)"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.sglang

TIE = 1e-4  # an argmax may differ only where the reference's two top log-probs are this close
ATOL = 1e-4  # float32, different kernels (SGLang's torch-native attention vs transformers' sdpa)


def agree(sgl, hf, what: str) -> None:
    """sgl: SGLang StepOutput (top-k log-prob rows), hf: HF StepOutput (full logits), same positions."""
    assert sgl.logits.shape == hf.logits.shape, f"{what}: {tuple(sgl.logits.shape)} vs {tuple(hf.logits.shape)}"
    ref = torch.log_softmax(hf.logits.float(), -1)  # [n, vocab]
    for i, (row, ref_row) in enumerate(zip(sgl.logits, ref)):
        top2 = ref_row.topk(2).values
        if int(row.argmax()) != int(ref_row.argmax()):
            assert float(top2[0] - top2[1]) < TIE, f"{what}, position {i}: argmax differs outside a tie"
        kept = torch.isfinite(row)  # SGLang's top-k entries, normalised over the whole vocabulary
        assert int(kept.sum()) == min(64, row.numel()), f"{what}, position {i}: {int(kept.sum())} entries"
        torch.testing.assert_close(row[kept], ref_row[kept], atol=ATOL, rtol=0, msg=f"{what}, position {i}")
        assert set(ref_row.topk(int(kept.sum()) - 1).indices.tolist()) <= set(kept.nonzero().flatten().tolist()), \
            f"{what}, position {i}: SGLang's top-k is not the reference's"
    if hf.hidden is not None:
        torch.testing.assert_close(sgl.hidden, hf.hidden, atol=ATOL, rtol=ATOL, msg=f"{what}: hidden states")


@pytest.fixture(scope="module")
def prompts(hf_pair) -> list[list[int]]:
    from r2r.testbed.splits import heldout

    problems = heldout("math", "validation", 2) + heldout("code", "validation", 2)
    return [hf_pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]


@pytest.mark.parametrize("role", ["slm", "llm"])
def test_sglang_equals_hf(role: str, sglang_pair, hf_pair, prompts) -> None:
    sgl, hf = getattr(sglang_pair, role), getattr(hf_pair, role)
    assert (sgl.vocab_size, sgl.hidden_size, sgl.fingerprint) == (hf.vocab_size, hf.hidden_size, hf.fingerprint)
    assert sgl.n_parameters == hf.n_parameters
    s_open, h_open = sgl.open(prompts, want_hidden=True), hf.open(prompts, want_hidden=True)
    for k, ((_, s), (_, h)) in enumerate(zip(s_open, h_open)):
        agree(s, h, f"{role} prefill of prompt {k}")
    seqs_s, seqs_h = [s for s, _ in s_open], [s for s, _ in h_open]
    more = [[int(o.logits[-1].argmax()), 17, 40, 41, 42] for _, o in h_open]  # 5 tokens at once, batched
    for k, (s, h) in enumerate(zip(sgl.extend(seqs_s, more, True), hf.extend(seqs_h, more, True))):
        agree(s, h, f"{role} 5-token extend of prompt {k}")
    for step in range(3):  # one token at a time
        ones = [[30 + step]] * len(prompts)
        for k, (s, h) in enumerate(zip(sgl.extend(seqs_s, ones, True), hf.extend(seqs_h, ones, True))):
            agree(s, h, f"{role} 1-token extend {step} of prompt {k}")
    n = [6, 1, 9, 3]
    s_blocks, h_blocks = sgl.draft(seqs_s, [[50]] * 4, n, True), hf.draft(seqs_h, [[50]] * 4, n, True)
    for k, (s, h) in enumerate(zip(s_blocks, h_blocks)):
        assert s.tokens == h.tokens, f"{role} drafted block of prompt {k}: {s.tokens} vs {h.tokens}"
        agree(s.out, h.out, f"{role} drafted block of prompt {k}")
    for seq in seqs_s:
        sgl.close(seq)
    for seq in seqs_h:
        hf.close(seq)


def test_sglang_on_a_cpu_needs_its_switch(monkeypatch) -> None:
    """Without SGLANG_USE_CPU_ENGINE=1 SGLang loads its CUDA kernels and fails deep in an import: say so first."""
    from r2r.serving.backends.sglang import SGLangDevice, require_sglang

    monkeypatch.delenv("SGLANG_USE_CPU_ENGINE", raising=False)
    with pytest.raises(ValueError, match="SGLANG_USE_CPU_ENGINE=1"):
        require_sglang(SGLangDevice.CPU)
    require_sglang(SGLangDevice.CUDA)
