"""The HF backend's KV memory: one pool, a row (slot) per open sequence.

Layout. One buffer per layer holds its keys and values, [2, slots, kv_heads, columns, head_dim]. Slot s is
one sequence's row and its column c holds position c, so a sequence's KV is always the prefix [0, length) of its
row: `truncate` only moves the length back, the next tokens overwrite what lies past it, and no column is a hole.

Passes. Attention on a CPU (SDPA) reads a dense [batch, kv_heads, columns, head_dim] tensor. A pass over the
sequences of consecutive slots reads that slice of the buffer in place, so the decode loop (every sequence, every
step) never copies its past. A pass over any other set of slots (the LLM verifying the requests that flagged, a
drafting step some requests sit out) is read in place too where the attention function takes slots
(`grouped_attention.grouped_sdpa`: one SDPA call per row on its own slot); otherwise it gathers their rows one
layer at a time, a transient copy the size of what that layer's attention reads (the HF backend decides which,
and for short rows runs a one-token pass on the consecutive run around them instead, the rows between idle).
New keys and values are written straight into each row at its own length.

Membership. A new sequence takes the next slot and its prefill writes in place; a fork copies its parent's prefix
into a new slot; a closed sequence's slot is filled by moving the last row into it (one row copied, none other),
so the slots in use stay 0..n-1. When at most half the slots (or half the columns) are in use, the pool shrinks to
what it holds, copying the rows it keeps once. Both axes grow by a quarter when full, so copies on growth are
amortized O(1) per token. A resize goes layer by layer: while it copies, the pool holds one layer's buffer twice,
not all of them (one buffer for every layer would need 2.25x the KV for a moment). Bytes held: slots x columns x
the KV of one position; about 1.25x the tokens held when rows are of similar length, while a row much shorter than
the longest still takes the longest's columns (docs/perf-notes.md, 2026-12-07, says why this is the trade taken).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers.cache_utils import Cache, DynamicLayer

COLUMN_STEP = 64  # columns are allocated in multiples of this


class Pooled(Protocol):
    """A sequence as the pool sees it: its slot (None before its first pass and after close) and length."""

    slot: int | None
    length: int


def _grown(current: int, needed: int, step: int = 1) -> int:
    """A new size of at least `needed`, a quarter above `current` at least, rounded up to `step`."""
    size = max(needed, current + max(1, current // 4))
    return -(-size // step) * step


@dataclass(frozen=True)
class PassPlan:
    """Where one pass over some rows reads and writes: each row appends `width` columns (its new tokens, then
    padding) at its own length."""

    rows: torch.Tensor  # [batch, 1] slot of each pass row, ascending
    cols: torch.Tensor  # [batch, width] the column each appended position is written to
    run: slice | None  # the rows' slots when consecutive (read in place as one slice)
    used: int  # columns attention reads: the longest length + width
    in_place: bool = False  # scattered rows read in place: attention gets every slot and picks the rows' own


class _PassLayer(DynamicLayer):
    """One layer's view of the pool for one pass (transformers calls `update` once per layer per pass)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, plan: PassPlan) -> None:
        """`k`, `v`: the pool's [slots, kv_heads, columns, head_dim] buffers of this layer."""
        super().__init__()
        self.is_initialized, self.device = True, k.device
        self._k, self._v, self._plan = k, v, plan
        self._past = plan.used - plan.cols.shape[1]

    @property
    def keys(self) -> torch.Tensor:
        return self._k

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        assert value is None, "keys are written through update()"

    @property
    def values(self) -> torch.Tensor:
        return self._v

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        assert value is None, "values are written through update()"

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """New keys, values [batch, kv_heads, width, head_dim] in; the rows' [batch, kv_heads, used, head_dim] out."""
        p = self._plan
        assert key_states.shape[0] == p.rows.shape[0] and key_states.shape[2] == p.cols.shape[1], \
            f"{tuple(key_states.shape)} for {tuple(p.cols.shape)} positions"
        self._k[p.rows, :, p.cols] = key_states.transpose(1, 2)  # [batch, width, kv_heads, head_dim] at (row, col)
        self._v[p.rows, :, p.cols] = value_states.transpose(1, 2)
        self._past = p.used
        if p.run is not None:
            return self._k[p.run, :, : p.used], self._v[p.run, :, : p.used]
        if p.in_place:  # every slot; the attention function reads the pass's rows (`p.rows`) from it
            return self._k[:, :, : p.used], self._v[:, :, : p.used]
        slots = p.rows[:, 0]
        return self._k[:, :, : p.used].index_select(0, slots), self._v[:, :, : p.used].index_select(0, slots)

    def get_seq_length(self) -> int:
        return self._past

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._plan.used, 0

    def get_max_length(self) -> int:
        return -1


class KVPool:
    """Every open sequence's keys and values, a slot per sequence (see the module docstring)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        # zeros, not empty: columns past a row's length are masked, but garbage could be NaN and 0 * NaN is NaN
        self.layers = [torch.zeros((2, 0, kv_heads, 0, head_dim), dtype=dtype, device=device) for _ in range(layers)]
        self.rows: list[Pooled] = []  # rows[s] is the sequence in slot s

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds (what the KV costs in memory)."""
        return sum(buf.numel() * buf.element_size() for buf in self.layers)

    @property
    def slots(self) -> int:
        return self.layers[0].shape[1]

    @property
    def columns(self) -> int:
        return self.layers[0].shape[3]

    def admit(self, seqs: list[Pooled]) -> None:
        """Give each sequence, holding nothing yet, the next free slot."""
        assert all(s.slot is None and s.length == 0 for s in seqs), "only empty sequences join the pool"
        needed = len(self.rows) + len(seqs)
        if needed > self.slots:
            self._resize(_grown(self.slots, needed), self.columns)
        for seq in seqs:
            seq.slot = len(self.rows)
            self.rows.append(seq)

    def fork(self, parent: Pooled, child: Pooled, length: int) -> None:
        """Admit `child` holding a copy of `parent`'s first `length` positions."""
        assert parent.slot is not None and length <= parent.length, f"fork at {length} of {parent.length} positions"
        self.admit([child])
        self._copy_row(parent.slot, child.slot, length)

    def release(self, seq: Pooled) -> None:
        """Free `seq`'s slot: the last row moves into it; shrink when the pool is at most half used."""
        slot, last = seq.slot, self.rows.pop()
        assert slot is not None, "release of a sequence that holds no slot"
        if last is not seq:
            self._copy_row(last.slot, slot, last.length)
            last.slot, self.rows[slot] = slot, last
        seq.slot = None
        n, longest = len(self.rows), max((s.length for s in self.rows), default=0)
        slots, columns = self.slots, self.columns
        if 2 * n <= slots:
            slots = n
        if 2 * longest <= columns:  # keep a quarter of headroom for the rows' growth
            columns = _grown(longest, longest, COLUMN_STEP) if n else 0
        if (slots, columns) != (self.slots, self.columns):
            self._resize(slots, columns)

    def _copy_row(self, src: int, dst: int, length: int) -> None:
        """Every layer's first `length` positions of slot `src` into slot `dst`."""
        for buf in self.layers:
            buf[:, dst, :, :length] = buf[:, src, :, :length]

    def plan(self, seqs: list[Pooled], width: int, in_place: bool = False) -> PassPlan:
        """Make room for `width` more columns on every row of `seqs` (ordered by slot) and say where they go.
        `in_place`: scattered slots are read where they are, by an attention function that takes the slots
        (`grouped_attention.KV_SLOTS`), instead of gathered."""
        slots = [s.slot for s in seqs]
        assert all(a < b for a, b in zip(slots, slots[1:])), f"a pass runs rows in slot order, got {slots}"
        used = max(s.length for s in seqs) + width
        if used > self.columns:
            self._resize(self.slots, _grown(self.columns, used, COLUMN_STEP))
        device = self.layers[0].device
        rows = torch.tensor(slots, dtype=torch.long, device=device)[:, None]
        cols = torch.tensor([s.length for s in seqs], dtype=torch.long, device=device)[:, None] \
            + torch.arange(width, device=device)
        run = slice(slots[0], slots[-1] + 1) if slots[-1] - slots[0] == len(slots) - 1 else None
        return PassPlan(rows, cols, run, used, in_place=run is None and in_place)

    def cache(self, plan: PassPlan) -> Cache:
        """A transformers Cache that reads and writes the pool for one pass."""
        return Cache(layers=[_PassLayer(buf[0], buf[1], plan) for buf in self.layers])

    def _resize(self, slots: int, columns: int) -> None:
        """New buffers of `slots` x `columns`, the held rows copied over (once: the caller grows geometrically),
        one layer at a time: each old buffer is freed before the next new one is made."""
        n, keep = len(self.rows), min(self.columns, columns)
        assert n <= slots and all(s.length <= columns for s in self.rows), "a resize may not drop held positions"
        for i, old in enumerate(self.layers):
            new = torch.zeros((2, slots, old.shape[2], columns, old.shape[4]), dtype=old.dtype, device=old.device)
            new[:, :n, :, :keep] = old[:, :n, :, :keep]
            self.layers[i] = new
