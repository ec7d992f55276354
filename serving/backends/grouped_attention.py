"""Grouped-query attention without copying keys and values: each key/value head's query heads become its rows.

transformers' SDPA path, given a mask (the HF backend always gives one), repeats every key and value head to the
query heads before a pass wider than one token (`repeat_kv`): at long contexts that copy is most of the pass. The
LLM's verification and catch-up passes are such passes, and their copy grows with the output (at the long
benchmark's 16k positions, batch 8, 8 query / 4 key-value heads: 0.27 GB a layer). Here the `group` query heads of
key/value head g are laid out as `group x q` query rows of head g, each row under its position's mask, so SDPA
reads every key once: the same dot products and the same softmax per query row, as transformers already does for
one-token passes (`pack_gqa`).

Registered with transformers' `AttentionInterface` (its extension point for attention functions) under
`GROUPED_SDPA`; anything this layout does not cover (no grouping, per-head masks, a causal pass without a mask,
position biases, soft-capping, attention sinks) goes to transformers' own SDPA function unchanged.
"""
from __future__ import annotations

import torch

GROUPED_SDPA = "r2r_grouped_sdpa"
# the keyword argument (passed through the model's forward to its attention function) that says the pass's rows
# are scattered slots of the KV pool: key and value hold every slot, row b of the pass reads slot KV_SLOTS[b]
KV_SLOTS = "kv_slots"
# the keyword argument that carries the pass's mask already in this layout (`grouped_mask`), built once per pass:
# otherwise every layer repeats the boolean mask per query head and SDPA converts the copy to floats
GROUPED_MASK = "grouped_mask"
# attention-function arguments this layout does not implement: left to transformers' SDPA function
UNSUPPORTED = ("position_bias", "softcap", "s_aux")


def grouped_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [batch, heads, q, dim], key/value [batch, kv_heads, k,
    dim], a [batch or 1, 1, q, k] mask; returns [batch, q, heads, dim]. With `KV_SLOTS` (a [batch] tensor of
    slots), key and value hold every slot of the KV pool and query row b attends slot KV_SLOTS[b], read in place
    (one SDPA call per row: at 16k columns a gather of the rows costs more than their attention). With
    `GROUPED_MASK`, `grouped_mask(attention_mask, ...)` given by the caller, used where this layout applies."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    slots = kwargs.pop(KV_SLOTS, None)
    prebuilt = kwargs.pop(GROUPED_MASK, None)
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # one mask row per query position, shared by the heads (or no mask for a single query)
    per_position = (attention_mask.ndim == 4 and attention_mask.shape[1] == 1 and attention_mask.shape[2] == q_len
                    if attention_mask is not None else q_len == 1)
    if group == 1 or not per_position or any(kwargs.get(name) is not None for name in UNSUPPORTED):
        if slots is not None:
            key, value = key.index_select(0, slots), value.index_select(0, slots)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # head h = g * group + r reads key/value head g: rows (r, position) of head g, the mask repeated per r
    rows = query.reshape(batch, kv_heads, group * q_len, head_dim)
    if prebuilt is not None:
        assert prebuilt.shape[2:] == (group * q_len if q_len > 1 else 1, attention_mask.shape[3]), \
            f"a grouped mask {tuple(prebuilt.shape)} for a {tuple(attention_mask.shape)} mask"
        mask = prebuilt
    else:
        mask = None if attention_mask is None else _rows_per_head(attention_mask, group)
    p = dropout if module.training else 0.0
    if slots is None:
        out = torch.nn.functional.scaled_dot_product_attention(rows, key, value, attn_mask=mask, dropout_p=p,
                                                               scale=scaling)
    else:
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            rows[b : b + 1], key[s : s + 1], value[s : s + 1], dropout_p=p, scale=scaling,
            attn_mask=None if mask is None else mask[b : b + 1] if mask.shape[0] > 1 else mask)
            for b, s in enumerate(slots.tolist())])
    return out.reshape(batch, heads, q_len, value.shape[-1]).transpose(1, 2).contiguous(), None


def grouped_mask(mask: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
    """A pass's boolean [batch, 1, q, keys] mask (True = attend) in `grouped_sdpa`'s row layout, [batch, 1,
    group x q, keys] (a single row when q is 1), additive (0 / -inf) in the queries' dtype, which SDPA adds as it
    is: the same scores as the boolean mask SDPA would convert. One LLM-shaped layer (8 / 4 heads, 12 queries at
    16k keys, one CPU thread): 6.1 ms from a boolean mask against 5.0 from this one at batch 1, 54 against 48 at
    batch 8."""
    rows = _rows_per_head(mask, group)
    return torch.zeros(rows.shape, dtype=dtype, device=mask.device).masked_fill_(~rows, float("-inf"))


def _rows_per_head(mask: torch.Tensor, group: int) -> torch.Tensor:
    """A [batch, 1, q, keys] mask repeated for the `group` query heads of a key/value head: rows (r, position); a
    one-query mask broadcasts over them as it is."""
    return mask if mask.shape[2] == 1 else mask.repeat(1, 1, group, 1)


def use_grouped_sdpa(model: torch.nn.Module) -> None:
    """Switch a transformers model that runs SDPA to `grouped_sdpa`, registered under `GROUPED_SDPA` with SDPA's
    mask format (registering again is a no-op: same key, same functions). A model on another attention
    implementation (eager for one SDPA cannot run, a flash kernel) keeps it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation not in ("sdpa", GROUPED_SDPA):
        return
    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    model.set_attn_implementation(GROUPED_SDPA)
