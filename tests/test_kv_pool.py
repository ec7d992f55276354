"""The HF backend's KV memory follows the tokens held: closing half of a batch gives half the bytes back, joining a
batch with room or leaving it moves no row but the last, and the sequences that stay decode as fresh ones would."""
from __future__ import annotations

import pytest
import torch

from r2r.serving.backends.base import LAST_ROW
from r2r.serving.backends.hf import HFBackend, prefill_groups

ATOL = 2e-4


def full_forward(backend: HFBackend, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return backend.model(input_ids=torch.tensor([ids])).logits[0].float()


def bytes_per_position(backend: HFBackend) -> int:
    cfg = backend.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * backend.model.dtype.itemsize


def held_bytes(backend: HFBackend, seqs) -> int:
    return sum(s.length for s in seqs if not s.closed) * bytes_per_position(backend)


def test_kv_bytes_after_closing_half_of_a_batch_shrink_accordingly(tiny_models) -> None:
    backend = HFBackend(tiny_models["llama"])
    prompts = [[3 + i] + list(range(10, 10 + 30 + i)) for i in range(8)]  # 31-38 tokens
    tokens = [list(p) for p in prompts]
    seqs = [s for s, _ in backend.open(prompts, rows_at=[LAST_ROW] * 8)]
    for step in range(20):  # decode: every row a token a step
        backend.extend(seqs, [[40 + step]] * 8)
        for t in tokens:
            t.append(40 + step)
    before, held = backend.kv_bytes, held_bytes(backend, seqs)
    assert held <= before <= 1.5 * held, f"{before} bytes for {held} held: rows sized by what they hold"
    for s in seqs[::2]:  # every other row, so rows move into the freed slots
        backend.close(s)
    after = backend.kv_bytes
    assert after <= before / 2, f"closing half of the batch gives half back: {before} -> {after} bytes"
    assert after >= held_bytes(backend, seqs), "the rows kept are still held"
    survivors, kept = seqs[1::2], tokens[1::2]
    outs = backend.extend(survivors, [[90], [91], [92], [93]])
    for out, ids, new in zip(outs, kept, [90, 91, 92, 93]):
        torch.testing.assert_close(out.logits, full_forward(backend, ids + [new])[-1:], atol=ATOL, rtol=0)
    for s in survivors:
        backend.close(s)
    assert backend.kv_bytes == 0, "an empty pool holds nothing"


def test_joining_and_leaving_copy_no_other_row(tiny_models) -> None:
    """A join into a batch with room reallocates nothing; a close moves only the last row (into the freed slot)."""
    backend = HFBackend(tiny_models["gemma3"])
    prompts = [[3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13, 14], [15, 16], [17, 18, 19], [20, 21, 22, 23]]
    tokens = [list(p) for p in prompts]
    seqs = [s for s, _ in backend.open(prompts)]
    backend.close(seqs[5])  # the pool keeps its six slots: one is free
    pool_bytes, slots = backend.kv_bytes, [s.slot for s in seqs[:5]]
    (joiner, _), = backend.open([[30, 31, 32]])
    assert backend.kv_bytes == pool_bytes and [s.slot for s in seqs[:5]] == slots, "a join takes the free slot"
    seqs[5], tokens[5] = joiner, [30, 31, 32]
    slot_of = {id(s): s.slot for s in seqs}
    last, freed = max(seqs, key=lambda s: s.slot), seqs[1].slot
    backend.close(seqs[1])
    for s in seqs[:1] + seqs[2:]:
        assert s.slot == (freed if s is last else slot_of[id(s)]), "only the last row moves, into the freed slot"
    live = [i for i in range(6) if i != 1]
    outs = backend.extend([seqs[i] for i in live], [[40 + i] for i in live])
    for i, out in zip(live, outs):
        torch.testing.assert_close(out.logits, full_forward(backend, tokens[i] + [40 + i])[-1:], atol=ATOL, rtol=0)
    for i in live:
        backend.close(seqs[i])
    assert backend.open_sequences == 0


def test_a_one_token_pass_over_scattered_rows_runs_the_rows_between_idle(tiny_models) -> None:
    """Rows 0 and 2 of three take a token each: row 1 rides along in place and is left as it was."""
    backend = HFBackend(tiny_models["llama"])
    prompts = [[3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13, 14]]
    seqs = [s for s, _ in backend.open(prompts)]
    assert sorted(s.slot for s in seqs) == [0, 1, 2]
    a, idle, b = sorted(seqs, key=lambda s: s.slot)
    tokens = {id(s): list(p) for s, p in zip(seqs, prompts)}
    outs = backend.extend([b, a], [[20], [21]])
    assert idle.length == len(tokens[id(idle)]), "an idle row gains nothing"
    for seq, out, new in zip([b, a], outs, [20, 21]):
        tokens[id(seq)].append(new)
        torch.testing.assert_close(out.logits, full_forward(backend, tokens[id(seq)])[-1:], atol=ATOL, rtol=0)
    outs = backend.extend([idle, a, b], [[22], [23], [24]])
    for seq, out, new in zip([idle, a, b], outs, [22, 23, 24]):
        tokens[id(seq)].append(new)
        torch.testing.assert_close(out.logits, full_forward(backend, tokens[id(seq)])[-1:], atol=ATOL, rtol=0)
    for s in seqs:
        backend.close(s)


def test_a_failed_open_holds_no_slot(tiny_models) -> None:
    """A prefill group that fails (a token id past the vocabulary) leaves nothing open: neither its own sequences'
    slots nor those of the groups opened before it, whose handles the caller never gets."""
    backend = HFBackend(tiny_models["llama"])
    (kept, _), = backend.open([[3, 4, 5]])
    bad = backend.vocab_size + 7
    prompts = [[5, 6], [7, 8], list(range(10, 70)) + [bad]]  # two prefill groups: the long prompt is its own
    assert len(prefill_groups([len(p) for p in prompts])) == 2
    with pytest.raises(IndexError):
        backend.open(prompts)
    assert backend.open_sequences == 1 and len(backend._pool.rows) == 1 and kept.slot == 0
    out, = backend.extend([kept], [[6]])  # the pool still serves the sequence that was open
    torch.testing.assert_close(out.logits, full_forward(backend, [3, 4, 5, 6])[-1:], atol=ATOL, rtol=0)
