"""Grouped SDPA (query heads folded onto their key/value head) against attention computed by hand in float64, and
the HF backend's passes on a grouped-query model against the same model run whole with eager attention."""
from __future__ import annotations

import copy

import pytest
import torch

from r2r.serving.backends.grouped_attention import (GROUPED_MASK, GROUPED_SDPA, KV_SLOTS, grouped_mask, grouped_sdpa,
                                                          use_grouped_sdpa)
from r2r.serving.backends.hf import IN_PLACE_COLUMNS, HFBackend


class _Layer(torch.nn.Module):
    def __init__(self, group: int) -> None:
        super().__init__()
        self.num_key_value_groups = group
        self.eval()


def _by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
             causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per query head over its key/value head (h // group), float64, [b, q, h, d]."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    scores = q.double() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril(k.shape[2] - q.shape[2])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("heads,kv_heads", [(8, 4), (8, 2), (6, 6)])
@pytest.mark.parametrize("q_len", [1, 3, 7])
def test_grouped_sdpa_is_attention(heads: int, kv_heads: int, q_len: int) -> None:
    gen = torch.Generator().manual_seed(heads * 10 + q_len)
    batch, keys, dim = 3, 40, 16
    q = torch.randn(batch, heads, q_len, dim, generator=gen)
    k, v = (torch.randn(batch, kv_heads, keys, dim, generator=gen) for _ in range(2))
    # each row a different length (padding columns masked), each query its own causal limit
    lengths = torch.tensor([40, 25, 31])
    query_pos = lengths[:, None] - q_len + torch.arange(q_len)[None, :]
    mask = (torch.arange(keys)[None, None, :] <= query_pos[:, :, None])[:, None]  # [batch, 1, q, keys]
    out, _ = grouped_sdpa(_Layer(heads // kv_heads), q, k, v, mask, scaling=dim ** -0.5)
    assert out.shape == (batch, q_len, heads, dim)
    torch.testing.assert_close(out.double(), _by_hand(q, k, v, mask, causal=False), atol=1e-5, rtol=0)
    # the mask built once per pass in this layout: the same result, bit for bit
    prebuilt = {GROUPED_MASK: grouped_mask(mask, heads // kv_heads, q.dtype)}
    assert torch.equal(grouped_sdpa(_Layer(heads // kv_heads), q, k, v, mask, scaling=dim ** -0.5, **prebuilt)[0], out)
    if heads > kv_heads:  # where this layout applies, the mask given is the one used: a stricter one gives its result
        stricter = mask & (torch.arange(keys) >= 3)
        given = {GROUPED_MASK: grouped_mask(stricter, heads // kv_heads, q.dtype)}
        out, _ = grouped_sdpa(_Layer(heads // kv_heads), q, k, v, mask, scaling=dim ** -0.5, **given)
        torch.testing.assert_close(out.double(), _by_hand(q, k, v, stricter, causal=False), atol=1e-5, rtol=0)


def test_a_mask_shared_by_every_query_falls_back() -> None:
    """A [batch, 1, 1, keys] mask (padding only) over a 4-token pass: not one row per position, so SDPA's path."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 8, 4, 16, generator=gen)
    k, v = (torch.randn(2, 4, 12, 16, generator=gen) for _ in range(2))
    mask = (torch.arange(12)[None, :] < torch.tensor([[12], [9]]))[:, None, None, :]
    out, _ = grouped_sdpa(_Layer(2), q, k, v, mask, scaling=16 ** -0.5)
    torch.testing.assert_close(out.double(), _by_hand(q, k, v, mask, causal=False), atol=1e-5, rtol=0)


def test_unmasked_wide_pass_falls_back_to_causal_sdpa() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 8, 5, 16, generator=gen)
    k, v = (torch.randn(2, 4, 5, 16, generator=gen) for _ in range(2))
    out, _ = grouped_sdpa(_Layer(2), q, k, v, None, scaling=16 ** -0.5, is_causal=True)
    torch.testing.assert_close(out.double(), _by_hand(q, k, v, None, causal=True), atol=1e-5, rtol=0)


def test_backend_passes_equal_a_whole_eager_forward() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128)
    model = Qwen2ForCausalLM(config)  # transformers seeds its init from torch's default generator: no seed needed
    model.set_attn_implementation("sdpa")  # as the backend loads models
    reference = Qwen2ForCausalLM(copy.deepcopy(config))  # a config of its own: attention is set on it
    reference.load_state_dict(model.state_dict())
    reference.set_attn_implementation("eager")
    use_grouped_sdpa(reference)
    assert reference.config._attn_implementation == "eager", "a model off SDPA keeps its attention"
    backend = HFBackend.from_model(model, "tiny-gqa", "tiny-gqa")
    assert model.config._attn_implementation == GROUPED_SDPA
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]]
    extensions = [[10, 11, 12, 13], [14, 15]]  # a wide pass over rows of different lengths
    opened = backend.open(prompts)
    outs = backend.extend([seq for seq, _ in opened], extensions)
    with torch.no_grad():
        for prompt, ext, out in zip(prompts, extensions, outs):
            whole = reference(torch.tensor([prompt + ext])).logits[0, len(prompt):]
            torch.testing.assert_close(out.logits, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4)])
@pytest.mark.parametrize("q_len", [1, 3])
def test_scattered_slots_are_read_in_place(heads: int, kv_heads: int, q_len: int) -> None:
    """With KV_SLOTS, key and value hold every slot of a pool and row b attends slot KV_SLOTS[b] (ungrouped heads
    take SDPA's path on the rows gathered)."""
    gen = torch.Generator().manual_seed(heads + q_len)
    pool_slots, keys, dim = 5, 30, 16
    slots = torch.tensor([4, 1, 3])
    q = torch.randn(len(slots), heads, q_len, dim, generator=gen)
    k, v = (torch.randn(pool_slots, kv_heads, keys, dim, generator=gen) for _ in range(2))
    query_pos = torch.tensor([29, 17, 22])[:, None] - q_len + 1 + torch.arange(q_len)[None, :]
    mask = (torch.arange(keys)[None, None, :] <= query_pos[:, :, None])[:, None]
    out, _ = grouped_sdpa(_Layer(heads // kv_heads), q, k, v, mask, scaling=dim ** -0.5, **{KV_SLOTS: slots})
    expected = _by_hand(q, k[slots], v[slots], mask, causal=False)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    prebuilt = {GROUPED_MASK: grouped_mask(mask, heads // kv_heads, q.dtype), KV_SLOTS: slots}
    assert torch.equal(grouped_sdpa(_Layer(heads // kv_heads), q, k, v, mask, scaling=dim ** -0.5, **prebuilt)[0], out)


def test_backend_reads_long_scattered_rows_in_place() -> None:
    """Rows past IN_PLACE_COLUMNS, two of three in a pass (wide, then one-token): a whole forward's logits."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = Qwen2ForCausalLM(config)
    model.set_attn_implementation("sdpa")
    backend = HFBackend.from_model(model, "tiny-long", "tiny-long")
    gen = torch.Generator().manual_seed(3)
    tokens = [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (IN_PLACE_COLUMNS, 40, IN_PLACE_COLUMNS + 9)]
    seqs = [seq for seq, _ in backend.open(tokens)]
    for new in ([[5, 6, 7], [8, 9]], [[10], [11]]):  # rows 0 and 2 of three: a verification-like pass, a decode
        assert backend._in_place([seqs[0], seqs[2]], len(new[0])), "the pass this test is about"
        outs = backend.extend([seqs[2], seqs[0]], new)
        for i, ids, out in zip((2, 0), new, outs):
            tokens[i] += ids
            with torch.no_grad():
                whole = model(torch.tensor([tokens[i]])).logits[0, -len(ids):]
            torch.testing.assert_close(out.logits, whole, atol=1e-5, rtol=0)
