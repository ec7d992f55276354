"""A pass returns rows only at the positions asked for (`rows_at`), as full logits or top-k log-probs (`top_k`):
each equal to the same row of a plain full forward pass, on tiny models of several architectures, including one
with final logit softcapping; a model whose logits are transformed in a way the backend does not apply is refused."""
from __future__ import annotations

import pytest
import torch

from r2r.serving.backends.base import ALL_ROWS, LAST_ROW, NO_ROWS, RowKind
from r2r.serving.backends.hf import HFBackend

ATOL = 2e-4
COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def full_forward(backend: HFBackend, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: logits and post-norm hidden of one uncached pass over the whole sequence."""
    with torch.inference_mode():
        out = backend.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0].float(), out.hidden_states[-1][0].float()


def softcapped_gemma3() -> HFBackend:
    """A tiny Gemma 3 whose logits are capped hard enough (cap 0.05) that a head without the cap would differ."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=4, final_logit_softcapping=0.05,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    return HFBackend.from_model(AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa"), "gemma3-cap", "g")


def backend_for(arch: str, tiny_models) -> HFBackend:
    return softcapped_gemma3() if arch == "gemma3_softcap" else HFBackend(tiny_models[arch])


PROMPTS = [[5, 17, 40, 41, 42, 7], [9, 9], [12, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]]
NEW = [[50, 51, 52, 53], [54], [55, 56, 57]]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gemma3_softcap"])
def test_selected_rows_equal_the_same_rows_of_a_full_pass(tiny_models, arch: str) -> None:
    backend = backend_for(arch, tiny_models)
    opened = backend.open(PROMPTS, want_hidden=True, rows_at=[LAST_ROW, NO_ROWS, (0, -1, 4)])
    for (seq, out), ids, want_at in zip(opened, PROMPTS, [[5], [], [0, 10, 4]]):
        ref_logits, ref_hidden = full_forward(backend, ids)
        assert seq.length == len(ids) and out.kind == RowKind.LOGITS
        assert out.logits.shape == (len(want_at), backend.vocab_size), f"rows at {want_at} only"
        torch.testing.assert_close(out.logits, ref_logits[want_at], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.hidden, ref_hidden[want_at], atol=ATOL, rtol=0)
    # a catch-up asking for nothing, a decode step asking for the last row, a verification asking for two
    outs = backend.extend([s for s, _ in opened], NEW, rows_at=[NO_ROWS, LAST_ROW, (2, 0)])
    for out, ids, new, want_at in zip(outs, PROMPTS, NEW, [[], [0], [2, 0]]):
        ref = full_forward(backend, ids + new)[0][len(ids):]  # the rows after each appended token
        assert out.logits.shape[0] == len(want_at) and out.hidden is None
        torch.testing.assert_close(out.logits, ref[want_at], atol=ATOL, rtol=0)
    # the KV of a pass that made no rows is whole: the next pass sees every token
    after = backend.extend([opened[0][0]], [[60]], rows_at=[ALL_ROWS])[0]
    torch.testing.assert_close(after.logits, full_forward(backend, PROMPTS[0] + NEW[0] + [60])[0][-1:],
                               atol=ATOL, rtol=0)
    for s, _ in opened:
        backend.close(s)


@pytest.mark.parametrize("arch", ["llama", "gemma3_softcap"])
def test_top_k_rows_are_the_full_rows_top_log_probs(tiny_models, arch: str) -> None:
    """top_k: the k largest log-probabilities of the full row at their ids, -inf elsewhere (never renormalised)."""
    backend, k = backend_for(arch, tiny_models), 5
    (seq, out), = backend.open([PROMPTS[2]], rows_at=[(3, -1)], top_k=k)
    assert out.kind == RowKind.TOPK_LOGPROBS
    want = torch.log_softmax(full_forward(backend, PROMPTS[2])[0][[3, -1]], dim=-1)
    top = torch.topk(want, k, dim=-1)
    assert (out.logits > float("-inf")).sum(-1).tolist() == [k, k]
    torch.testing.assert_close(out.logits.gather(1, top.indices), top.values, atol=ATOL, rtol=0)
    backend.close(seq)


def test_softcapping_is_applied_to_selected_rows() -> None:
    """The cap changes the rows here (so the test above can tell a head that leaves it out)."""
    backend = softcapped_gemma3()
    (seq, out), = backend.open([PROMPTS[0]], rows_at=[LAST_ROW])
    assert float(out.logits.abs().max()) <= 0.05
    with torch.inference_mode():
        hidden = backend.model.get_decoder()(input_ids=torch.tensor([PROMPTS[0]])).last_hidden_state[0, -1:]
        uncapped = backend.model.get_output_embeddings()(hidden).float()
    assert not torch.allclose(out.logits, uncapped, atol=ATOL), "the cap must matter for this model"
    backend.close(seq)


def test_a_model_with_an_unknown_logit_transform_is_refused() -> None:
    """Granite divides its logits by `logits_scaling`: a head applied without it would serve wrong rows."""
    from transformers import AutoModelForCausalLM, GraniteConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GraniteConfig(**COMMON, logits_scaling=4.0), attn_implementation="sdpa")
    with pytest.raises(ValueError, match="output embeddings over the last hidden state"):
        HFBackend.from_model(model, "granite", "g")
