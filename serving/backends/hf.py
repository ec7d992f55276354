"""The transformers backend: any HF causal LM directory, CPU or CUDA.

KV layout. Sequences that run together live in one *resident batch*: a cache whose layers
keep [batch, kv_heads, columns, head_dim] buffers with spare capacity, plus per-row masks
of which columns hold real positions. Calling `extend` again with the same sequences (the
decode loop) appends in place: no copy of the past. A call with another set of sequences
first *evicts* the resident rows into per-sequence buffers and builds a new resident batch.

Within a batch each row's columns are [past | hole | new | pad]: a row's own past starts at
column 0 and new tokens of all rows start at the same column. Because columns and positions
no longer line up, the attention masks are built here from positions, not left to the
model: a query at position q sees the row's valid keys at positions <= q (and > q - window
on sliding-window layers). Padding queries take the row's last real position, so no
softmax row is fully masked (which would give NaNs that leak through 0 * NaN). Positions
are passed explicitly, so holes and padding never shift RoPE. `truncate` only masks
columns; holes are compacted at the next rebuild.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.cache_utils import Cache, DynamicLayer

from serving.backends.base import DraftedBlock, RowKind, StepOutput, draft_by_extending, open_by_extending
from serving.backends.fingerprint import model_fingerprint
from serving.backends.shared_body import materialize_weights
from serving.backends.threads import PassThreads, torch_threads

log = logging.getLogger(__name__)


def _attend(query_pos: torch.Tensor, res: _Resident, window: int | None) -> torch.Tensor:
    """[batch, 1, width, columns] bool: query (row, j) may attend column c."""
    q = query_pos.unsqueeze(2)  # [batch, width, 1]
    k = res.pos.unsqueeze(1)  # [batch, 1, columns]
    allowed = res.valid.unsqueeze(1) & (k <= q)
    if window is not None:
        allowed &= (q - k) < window
    # a row left with no key (an idle closed row) may see column 0: its output is discarded, but a fully
    # masked softmax row would be NaN
    allowed[:, :, 0] |= ~allowed.any(dim=2)
    return allowed.unsqueeze(1)


class _GrowableLayer(DynamicLayer):
    """A cache layer with spare capacity: appending writes in place instead of concatenating."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, cols: int) -> None:
        """`k`, `v`: [batch, kv_heads, capacity, head_dim] buffers whose first `cols` columns are filled."""
        super().__init__()
        self.is_initialized, self.device = True, k.device
        self._k, self._v, self.cols = k, v, cols

    @property
    def keys(self) -> torch.Tensor:
        return self._k[:, :, : self.cols]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        assert value is None, "keys are written through update()"

    @property
    def values(self) -> torch.Tensor:
        return self._v[:, :, : self.cols]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        assert value is None, "values are written through update()"

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[2]
        if self.cols + n > self._k.shape[2]:
            grow = max(2 * self._k.shape[2], self.cols + n)
            self._k = torch.cat([self._k, self._k.new_empty((*self._k.shape[:2], grow - self._k.shape[2],
                                                               self._k.shape[3]))], dim=2)
            self._v = torch.cat([self._v, self._v.new_empty((*self._v.shape[:2], grow - self._v.shape[2],
                                                               self._v.shape[3]))], dim=2)
        self._k[:, :, self.cols : self.cols + n] = key_states
        self._v[:, :, self.cols : self.cols + n] = value_states
        self.cols += n
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.cols

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cols + query_length, 0

    def get_max_length(self) -> int:
        return -1


@dataclass
class HFSequence:
    """One sequence. Its KV is either in `kv` ([layers, 2, kv_heads, length, head_dim]) or, while
    `row` is set, in the backend's resident batch at that row."""

    length: int = 0
    kv: torch.Tensor | None = None
    row: int | None = None
    closed: bool = False


@dataclass
class _Resident:
    seqs: list[HFSequence]
    cache: object  # transformers Cache over _GrowableLayer
    valid_buf: torch.Tensor  # [batch, capacity] bool: the column holds a real position of that row
    pos_buf: torch.Tensor  # [batch, capacity] long: the position stored in each column (-1 for none)
    cols: int  # columns in use

    @property
    def valid(self) -> torch.Tensor:
        """[batch, cols] view: writes go to the buffer."""
        return self.valid_buf[:, : self.cols]

    @property
    def pos(self) -> torch.Tensor:
        return self.pos_buf[:, : self.cols]

    def append(self, new_pos: torch.Tensor) -> None:
        """Columns for one pass's new positions ([batch, width], -1 for padding), written in place."""
        width, capacity = new_pos.shape[1], self.valid_buf.shape[1]
        if self.cols + width > capacity:
            grow = max(capacity, self.cols + width - capacity)
            self.valid_buf = torch.cat([self.valid_buf, self.valid_buf.new_zeros((len(self.seqs), grow))], dim=1)
            self.pos_buf = torch.cat([self.pos_buf, self.pos_buf.new_full((len(self.seqs), grow), -1)], dim=1)
        self.pos_buf[:, self.cols : self.cols + width] = new_pos
        self.valid_buf[:, self.cols : self.cols + width] = new_pos >= 0
        self.cols += width


# What one more prefill pass must save in padding to be worth it: a pass's fixed cost, in prompt positions
# (measured on the testbed pair on 2 CPU cores: SLM ~40, LLM ~26). Padding also costs attention and mask
# work quadratic in the width, which this linear model leaves out, so it cuts if anything too rarely.
PREFILL_PASS_POSITIONS = 32


def prefill_groups(lengths: list[int], pass_positions: int = PREFILL_PASS_POSITIONS) -> list[list[int]]:
    """Indices of prompts grouped into padded prefill passes: prompts sorted by length, cut into runs that
    minimize the positions computed (rows x longest prompt, per pass) plus `pass_positions` per pass.
    Dynamic programming over the cut points of the sorted order."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best, cut = [0] + [None] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        width = lengths[order[end - 1]]
        for start in range(end):
            cost = best[start] + pass_positions + (end - start) * width
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name of a transformers model's KV-cache argument: `cache` from transformers 5.24, `past_key_values`
    before (the GPU device has 5.17; the old name warns from 5.24 and goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFBackend:
    """Backend over a `transformers` AutoModelForCausalLM."""

    def __init__(self, model_dir: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32,
                 pass_threads: PassThreads | None = None) -> None:
        """`pass_threads`: CPU threads per pass by its size (None: every pass on torch's setting)."""
        from transformers import AutoModelForCausalLM

        path = Path(model_dir)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model at {path}: config.json is missing")
        materialize_weights(path)
        # sdpa: the boolean masks built in _masks are its format (True = attend)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        self._setup(model.to(pick_device(device)).eval(), str(model_dir), model_fingerprint(path), pass_threads)

    @classmethod
    def from_model(cls, model: torch.nn.Module, model_id: str, fingerprint: str,
                   pass_threads: PassThreads | None = None) -> HFBackend:
        """A backend over a model already in memory (built on its device: cost probes of shapes too large to
        write to disk). Its attention implementation must be sdpa."""
        backend = cls.__new__(cls)
        backend._setup(model.eval(), model_id, fingerprint, pass_threads)
        return backend

    def _setup(self, model: torch.nn.Module, model_id: str, fingerprint: str,
               pass_threads: PassThreads | None) -> None:
        self.model, self.model_id, self.fingerprint = model, model_id, fingerprint
        self.device = next(model.parameters()).device
        text_config = model.config.get_text_config(decoder=True)
        self.vocab_size = int(text_config.vocab_size)
        self.hidden_size = int(text_config.hidden_size)
        self.num_layers = int(text_config.num_hidden_layers)
        heads = int(text_config.num_attention_heads)
        self.kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
        self.head_dim = int(getattr(text_config, "head_dim", None) or self.hidden_size // heads)
        self.layer_types = sorted(set(getattr(text_config, "layer_types", None) or []))
        self.sliding_window = getattr(text_config, "sliding_window", None)
        self.max_length = int(getattr(text_config, "max_position_embeddings", 2048))
        self.forward_passes = 0
        self.open_sequences = 0  # opened and not yet closed: what a leak check watches
        self._resident: _Resident | None = None
        self._pass_threads = pass_threads if self.device.type == "cpu" else None
        self.n_parameters = sum(p.numel() for p in self.model.parameters())
        self._cache_kwarg = cache_kwarg(model)
        self.exact_full_distribution, self.returned_top_k = True, self.vocab_size
        self.drafts_in_one_call = False  # draft loops extend: speculative rounds draft a token per step

    # -- contract ---------------------------------------------------------------------------
    def open(self, prompts: list[list[int]], want_hidden: bool = False) -> list[tuple[HFSequence, StepOutput]]:
        """Prefill in passes of similar-length prompts (`prefill_groups`): a padded pass computes every row
        at its longest prompt's width (32 testbed prompts of 37-92 tokens: 108 ms in one SLM pass, 44 ms in
        four; LLM 556 vs 359 ms)."""
        opened: list = [None] * len(prompts)
        for group in prefill_groups([len(p) for p in prompts]):
            for i, seq_out in zip(group, open_by_extending(self, HFSequence, [prompts[i] for i in group], want_hidden)):
                opened[i] = seq_out
        return opened

    def extend(self, seqs: list[HFSequence], new_ids: list[list[int]], want_hidden: bool = False) -> list[StepOutput]:
        assert len(seqs) == len(new_ids), f"{len(seqs)} sequences but {len(new_ids)} token lists"
        assert all(len(ids) > 0 for ids in new_ids), "every sequence must get at least one new token"
        assert not any(s.closed for s in seqs), "extend on a closed sequence"
        assert len({id(s) for s in seqs}) == len(seqs), "a sequence appears twice in one batch"
        for seq, ids in zip(seqs, new_ids):
            if seq.length + len(ids) > self.max_length:
                raise ValueError(f"sequence would reach {seq.length + len(ids)} tokens; the context is {self.max_length}")
        with torch.inference_mode():
            if not self._is_resident(seqs):
                self._rebuild(seqs)
            rows: list[list[int]] = [[] for _ in self._resident.seqs]  # idle resident rows get no tokens
            for seq, ids in zip(seqs, new_ids):
                rows[seq.row] = ids
            outs = self._forward(rows, want_hidden)
            return [outs[seq.row] for seq in seqs]

    def draft(self, seqs: list[HFSequence], new_ids: list[list[int]], n_tokens: list[int],
              want_hidden: bool = False) -> list[DraftedBlock]:
        for seq, ids, n in zip(seqs, new_ids, n_tokens):
            if seq.length + len(ids) + n > self.max_length:
                raise ValueError(f"drafting would reach {seq.length + len(ids) + n} tokens; the context is "
                                 f"{self.max_length}")
        return draft_by_extending(self, seqs, new_ids, n_tokens, want_hidden)

    def truncate(self, seq: HFSequence, length: int) -> None:
        assert 0 <= length <= seq.length, f"truncate to {length} outside [0, {seq.length}]"
        if seq.row is not None:
            res = self._resident
            with torch.inference_mode():  # the masks are inference tensors
                res.valid[seq.row] &= res.pos[seq.row] < length
        else:
            seq.kv = None if seq.kv is None else seq.kv[:, :, :, :length]
        seq.length = length

    def close(self, seq: HFSequence) -> None:
        if not seq.closed:
            self.open_sequences -= 1
        seq.kv, seq.closed = None, True
        if seq.row is not None:
            with torch.inference_mode():
                self._resident.valid[seq.row] = False

    def fork(self, seq: HFSequence, length: int) -> HFSequence:
        assert not seq.closed and 0 <= length <= seq.length, f"fork at {length} of a {seq.length}-token sequence"
        with torch.inference_mode():
            kv = self._resident_kv(seq) if seq.row is not None else seq.kv
            copy = None if kv is None or length == 0 else kv[:, :, :, :length].clone()
        self.open_sequences += 1
        return HFSequence(length=length, kv=copy)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input-embedding rows of token ids: [...] -> [..., hidden] float32 on the CPU."""
        with torch.inference_mode():
            return self.model.get_input_embeddings()(ids.to(self.device)).float().cpu()

    def _masks(self, query_pos: torch.Tensor, res: _Resident) -> torch.Tensor | dict[str, torch.Tensor]:
        """A 4D mask, or one per layer type for models that mix full and sliding-window layers."""
        if not self.layer_types:
            return _attend(query_pos, res, None).to(self.device)
        return {kind: _attend(query_pos, res, self.sliding_window if "sliding" in kind else None).to(self.device)
                for kind in self.layer_types}

    # -- resident batch ---------------------------------------------------------------------
    def _is_resident(self, seqs: list[HFSequence]) -> bool:
        """Whether the resident batch can serve this call: it holds every sequence, at most half its
        rows would sit idle (a subset runs with the other rows idle rather than paying a rebuild), and
        holes (truncated or padded columns) do not outweigh the real positions."""
        res = self._resident
        if res is None or any(s.row is None for s in seqs) or 2 * len(seqs) < len(res.seqs):
            return False
        return res.valid.shape[1] <= 2 * max(s.length for s in res.seqs) + 64

    def _evict(self) -> None:
        """Move every live row of the resident batch into its sequence's own buffer."""
        res, self._resident = self._resident, None
        if res is None:
            return
        for seq in res.seqs:
            if not seq.closed:
                seq.kv = self._resident_kv(seq, res)
            seq.row = None

    def _resident_kv(self, seq: HFSequence, res: _Resident | None = None) -> torch.Tensor:
        """A resident row's positions, gathered: [layers, 2, kv_heads, length, head_dim]."""
        res = res or self._resident
        layers = res.cache.layers
        cols = torch.nonzero(res.valid[seq.row]).squeeze(1).to(layers[0].keys.device)
        assert len(cols) == seq.length, f"{len(cols)} valid positions for length {seq.length}"
        kv = layers[0].keys.new_empty((len(layers), 2, self.kv_heads, seq.length, self.head_dim))
        for i, layer in enumerate(layers):  # gathered straight into place: no intermediate copies
            torch.index_select(layer.keys[seq.row], 1, cols, out=kv[i, 0])
            torch.index_select(layer.values[seq.row], 1, cols, out=kv[i, 1])
        return kv

    def _rebuild(self, seqs: list[HFSequence]) -> None:
        """Make `seqs` the resident batch, rows in the given order, pasts left-aligned."""
        self._evict()
        batch, max_past = len(seqs), max(s.length for s in seqs)
        capacity = 2 * max_past + 64
        valid = torch.zeros((batch, capacity), dtype=torch.bool)
        pos = torch.full((batch, capacity), -1, dtype=torch.long)
        # every layer's K and V with spare capacity, in one buffer: [layers, 2, batch, kv_heads, capacity, head_dim]
        buf = torch.empty((self.num_layers, 2, batch, self.kv_heads, capacity, self.head_dim),
                          dtype=self.model.dtype, device=self.device)
        for row, seq in enumerate(seqs):
            if seq.length:
                buf[:, :, row, :, : seq.length] = seq.kv
                valid[row, : seq.length] = True
                pos[row, : seq.length] = torch.arange(seq.length)
            buf[:, :, row, :, seq.length : max_past] = 0  # holes are masked, but garbage could be NaN: 0 * NaN
            seq.row, seq.kv = row, None
        cache = Cache(layers=[_GrowableLayer(buf[i, 0], buf[i, 1], max_past) for i in range(self.num_layers)])
        self._resident = _Resident(list(seqs), cache, valid, pos, max_past)

    def _forward(self, new_ids: list[list[int]], want_hidden: bool) -> list[StepOutput | None]:
        """One pass over every resident row; rows with no new ids idle (their outputs are None)."""
        res = self._resident
        width, cols = max(len(ids) for ids in new_ids), res.cols
        if width == 1 and not self.layer_types and all(new_ids):
            # decode: one token for every row. A row's valid columns all hold positions below the new one, so
            # its mask is its valid columns (what _attend computes), read straight off the buffer
            position_ids = torch.tensor([[seq.length] for seq in res.seqs], dtype=torch.long)
            input_ids = torch.tensor(new_ids, dtype=torch.long)
            res.append(position_ids)
            mask: torch.Tensor | dict[str, torch.Tensor] = res.valid[:, None, None, :].to(self.device)
        else:
            # built as Python lists and converted once: per-row tensor writes cost more than the SLM's pass at
            # batch 32
            ids_rows, pos_rows, new_rows = [], [], []
            for seq, ids in zip(res.seqs, new_ids):
                n, pad = len(ids), width - len(ids)
                real = list(range(seq.length, seq.length + n))
                ids_rows.append(ids + [0] * pad)
                new_rows.append(real + [-1] * pad)
                pos_rows.append(real + [max(seq.length + n - 1, 0)] * pad)  # padding reuses the last real position
            input_ids = torch.tensor(ids_rows, dtype=torch.long)
            position_ids = torch.tensor(pos_rows, dtype=torch.long)
            res.append(torch.tensor(new_rows, dtype=torch.long))
            mask = self._masks(position_ids, res)
        dev = self.device
        threads = None if self._pass_threads is None else self._pass_threads.for_pass(self.n_parameters,
                                                                                     len(new_ids) * width)
        with torch_threads(threads):
            out = self.model(
                input_ids=input_ids.to(dev), position_ids=position_ids.to(dev),
                attention_mask=mask, use_cache=True, **{self._cache_kwarg: res.cache},
                output_hidden_states=want_hidden,
            )
        self.forward_passes += 1
        assert res.cache.layers[0].get_seq_length() == cols + width, "cache and masks out of step"
        logits = out.logits.float()  # [batch, width, vocab]
        hidden = out.hidden_states[-1].float() if want_hidden else None  # [batch, width, hidden]
        results: list[StepOutput | None] = []
        for row, (seq, ids) in enumerate(zip(res.seqs, new_ids)):
            n = len(ids)
            seq.length += n
            results.append(StepOutput(logits=logits[row, :n].cpu(), hidden=None if hidden is None else
                                      hidden[row, :n].cpu(), kind=RowKind.LOGITS) if n else None)
        return results
