"""The transformers backend: any HF causal LM directory, CPU or CUDA.

KV: every open sequence holds a row of one `KVPool` (serving/backends/kv_pool.py), column c holding position c.
A pass runs the model's decoder over the rows it extends, in slot order: consecutive slots (the decode loop) are
read in place; scattered ones too, a row at a time, once rows reach `IN_PLACE_COLUMNS`; shorter scattered rows are
gathered per layer (or, for a one-token pass, run in place with the few rows between them idle: `_pass_rows`).
Each row's new keys and values are written at its own length.

Masks are built here from positions, not left to the model: a query at position q sees its row's columns <= q
(and > q - window on sliding-window layers). Padding queries (rows with fewer new tokens than the pass is wide)
take the row's last real position, and their keys land past the row's length, where no real query looks and the
next real tokens overwrite them. Positions are passed explicitly, so padding never shifts RoPE.

Branches (`extend_with_branches`): a row's pass appends its own tokens at its length, then each branch's tokens
in the columns after them, under a tree mask: a branch token at position p sees the row's columns before the
branch point and its own branch's earlier tokens, at their positions (RoPE and sliding windows included). The
row's length then counts its own tokens only: the branches' columns lie past it, like padding, and the next pass
overwrites them. So the byte-level rows of a text cost their last few tokens each, and no copy of the sequence.

Rows: the decoder's last hidden states are kept only at the positions the caller asked for (`Positions`), and the
LM head (`serving/backends/lm_head.py`) is applied to those alone; the rows and hidden states of a pass cross to
the CPU as one tensor each.

Attention is transformers' SDPA with grouped-query heads folded onto their key/value heads
(`serving/backends/grouped_attention.py`), so no pass copies the keys and values it attends over.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from r2r.serving.backends.base import (Branch, DraftedBlock, Positions, RowKind, StepOutput, draft_by_extending,
                                       open_by_extending, resolve_rows)
from r2r.serving.backends.fingerprint import model_fingerprint
from r2r.serving.backends.grouped_attention import GROUPED_MASK, GROUPED_SDPA, KV_SLOTS, grouped_mask, use_grouped_sdpa
from r2r.serving.backends.kv_pool import KVPool
from r2r.serving.backends.lm_head import LMHead, check_head
from r2r.serving.backends.shared_body import materialize_weights
from r2r.serving.backends.threads import PassThreads, torch_threads

log = logging.getLogger(__name__)

# From this many columns a pass over scattered slots reads each row in place (an SDPA call per row) instead of
# gathering them: one layer, 4 of 8 rows, one CPU thread, gathered vs in place: LLM 0.24 vs 0.26 ms at 128 columns,
# 6.5 vs 1.2 at 1k, 98 vs 20 at 16k; SLM 0.05 vs 0.11, 0.37 vs 0.22, 20 vs 6.5 (the call per row is what it costs).
IN_PLACE_COLUMNS = 512

# the layer types whose attention masks the backend builds (`HFBackend._masks`); a model with any other refuses
MASKED_LAYER_TYPES = ("full_attention", "sliding_attention")


def _attend(query_pos: torch.Tensor, columns: int, window: int | None) -> torch.Tensor:
    """query_pos [batch, width] -> [batch, 1, width, columns] bool: query (row, j) may attend column (= position) c.
    Column c = query_pos itself is always allowed, so no softmax row is fully masked."""
    q = query_pos.unsqueeze(2)  # [batch, width, 1]
    c = torch.arange(columns, device=query_pos.device)  # [columns]
    allowed = c <= q
    if window is not None:
        allowed &= (q - c) < window
    return allowed.unsqueeze(1)


def _tree_attend(lengths: list[int], kept: list[int], spans: list[list[tuple[int, int]]], width: int,
                 columns: int, window: int | None) -> torch.Tensor:
    """[batch, 1, width, columns] bool for a pass in which row b appends kept[b] tokens of its own at its length
    lengths[b], then one branch per (at, n) span in spans[b] (n tokens at positions at.., in the columns after
    the kept ones), then padding. Every column has a position and a group (0: the row's own, g: branch g, -1:
    padding); a query sees the columns at or before its position of its own group, and a branch's queries also
    the row's own columns before its branch point. Padding queries see themselves only (no softmax row is
    fully masked)."""
    batch = len(lengths)
    c = torch.arange(columns)
    col_pos, col_grp = c.repeat(batch, 1), torch.zeros((batch, columns), dtype=torch.long)
    q_pos, q_grp, q_at = [], [], []
    for b, (length, k) in enumerate(zip(lengths, kept)):
        pos, grp, at = list(range(length, length + k)), [0] * k, [columns] * k
        start = length + k
        for g, (a, n) in enumerate(spans[b], 1):
            col_pos[b, start : start + n] = torch.arange(a, a + n)
            col_grp[b, start : start + n] = g
            pos += range(a, a + n)
            grp += [g] * n
            at += [a] * n
            start += n
        col_grp[b, start : length + width] = -1
        pad = width - len(pos)
        pos += [max(length + k - 1, 0)] * pad
        grp += [-2] * pad
        at += [0] * pad
        q_pos.append(pos), q_grp.append(grp), q_at.append(at)
    qp, qg, qa = (torch.tensor(x, dtype=torch.long)[:, :, None] for x in (q_pos, q_grp, q_at))
    cp, cg = col_pos[:, None, :], col_grp[:, None, :]
    allowed = (cp <= qp) & ((cg == qg) | ((cg == 0) & (c < qa)))
    if window is not None:
        allowed &= (qp - cp) < window
    own_col = torch.tensor(lengths, dtype=torch.long)[:, None, None] + torch.arange(width)[None, :, None]
    return (allowed | (c == own_col)).unsqueeze(1)


@dataclass
class HFSequence:
    """One sequence: its length, and its row of the backend's KV pool (None before its first pass and after close)."""

    length: int = 0
    slot: int | None = None
    closed: bool = False


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
        write to disk), loaded with sdpa attention (switched here to `grouped_sdpa`)."""
        backend = cls.__new__(cls)
        backend._setup(model.eval(), model_id, fingerprint, pass_threads)
        return backend

    def _setup(self, model: torch.nn.Module, model_id: str, fingerprint: str,
               pass_threads: PassThreads | None) -> None:
        use_grouped_sdpa(model)  # SDPA with no copy of K and V for grouped-query heads (same results)
        self.model, self.model_id, self.fingerprint = model, model_id, fingerprint
        self.device = next(model.parameters()).device
        text_config = model.config.get_text_config(decoder=True)
        self.vocab_size = int(text_config.vocab_size)
        self.hidden_size = int(text_config.hidden_size)
        heads = int(text_config.num_attention_heads)
        kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text_config, "head_dim", None) or self.hidden_size // heads)
        self.layer_types = sorted(set(getattr(text_config, "layer_types", None) or []))
        self.sliding_window = getattr(text_config, "sliding_window", None)
        unmasked = set(self.layer_types) - set(MASKED_LAYER_TYPES)
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            unmasked.add("sliding_attention without a window")
        if unmasked:  # a full mask for them would be silently inexact
            raise ValueError(f"{model_id}: layer types {sorted(unmasked)} are not supported by the HF backend "
                             f"(its masks cover {', '.join(MASKED_LAYER_TYPES)} with a sliding window)")
        self.max_length = int(getattr(text_config, "max_position_embeddings", 2048))
        self.forward_passes = 0
        self.open_sequences = 0  # opened and not yet closed: what a leak check watches
        self._decoder = model.get_decoder()  # the body: last hidden states, no logits
        self._head = LMHead(model)
        check_head(model, self._decoder, self._head)
        self._pool = KVPool(int(text_config.num_hidden_layers), kv_heads, head_dim, model.dtype, self.device)
        # query heads per key/value head where grouped_sdpa runs its own layout (None where it does not): it
        # takes the mask in that layout and reads scattered slots in place
        self._group = heads // kv_heads if model.config._attn_implementation == GROUPED_SDPA and heads > kv_heads \
            else None
        self._pass_threads = pass_threads if self.device.type == "cpu" else None
        self.n_parameters = sum(p.numel() for p in self.model.parameters())
        self._cache_kwarg = cache_kwarg(self._decoder)
        self.exact_full_distribution, self.returned_top_k = True, self.vocab_size
        self.drafts_in_one_call = False  # draft loops extend: speculative rounds draft a token per step

    @property
    def kv_bytes(self) -> int:
        """Bytes the KV pool holds (every open sequence's keys and values, and the pool's headroom)."""
        return self._pool.nbytes

    @property
    def held_lengths(self) -> list[int]:
        """The length of every open sequence that holds KV (in slot order): what the pool holds, row by row."""
        return [seq.length for seq in self._pool.rows]

    # -- contract ---------------------------------------------------------------------------
    def open(self, prompts: list[list[int]], want_hidden: bool = False, *, rows_at: list[Positions] | None = None,
             top_k: int | None = None) -> list[tuple[HFSequence, StepOutput]]:
        """Prefill in passes of similar-length prompts (`prefill_groups`): a padded pass computes every row
        at its longest prompt's width (32 testbed prompts of 37-92 tokens: 108 ms in one SLM pass, 44 ms in
        four; LLM 556 vs 359 ms)."""
        opened: list = [None] * len(prompts)
        try:
            for group in prefill_groups([len(p) for p in prompts]):
                at = None if rows_at is None else [rows_at[i] for i in group]
                for i, seq_out in zip(group, open_by_extending(self, HFSequence, [prompts[i] for i in group],
                                                               want_hidden, at, top_k)):
                    opened[i] = seq_out
        except BaseException:  # the caller gets no handle to the groups already opened: close them
            for seq_out in opened:
                if seq_out is not None:
                    self.close(seq_out[0])
            raise
        return opened

    def extend(self, seqs: list[HFSequence], new_ids: list[list[int]], want_hidden: bool = False, *,
               rows_at: list[Positions] | None = None, top_k: int | None = None) -> list[StepOutput]:
        assert len(seqs) == len(new_ids), f"{len(seqs)} sequences but {len(new_ids)} token lists"
        assert all(len(ids) > 0 for ids in new_ids), "every sequence must get at least one new token"
        assert not any(s.closed for s in seqs), "extend on a closed sequence"
        assert len({id(s) for s in seqs}) == len(seqs), "a sequence appears twice in one batch"
        assert top_k is None or 1 <= top_k <= self.vocab_size, f"top_k {top_k} outside [1, {self.vocab_size}]"
        for seq, ids in zip(seqs, new_ids):
            if seq.length + len(ids) > self.max_length:
                raise ValueError(f"sequence would reach {seq.length + len(ids)} tokens; the context is {self.max_length}")
        return self._run(seqs, new_ids, resolve_rows(rows_at, new_ids), top_k, want_hidden, None)

    def extend_with_branches(self, seqs: list[HFSequence], new_ids: list[list[int]], branches: list[list[Branch]],
                             want_hidden: bool = False) -> list[tuple[StepOutput, list[StepOutput]]]:
        """One pass: each sequence's own tokens, then its branches under a tree mask (module docstring)."""
        assert len(seqs) == len(new_ids) == len(branches), "one token list and one branch list per sequence"
        assert all(ids or bs for ids, bs in zip(new_ids, branches)), "new tokens or branches for each sequence"
        assert not any(s.closed for s in seqs), "extend_with_branches on a closed sequence"
        for seq, ids, bs in zip(seqs, new_ids, branches):
            for b in bs:
                assert b.at <= seq.length + len(ids), f"a branch at {b.at} of {seq.length + len(ids)} positions"
            reach = max([seq.length + len(ids)] + [b.at + len(b.ids) for b in bs])
            if reach > self.max_length:
                raise ValueError(f"a sequence or branch would reach {reach} tokens; the context is {self.max_length}")
        feeds = [ids + [t for b in bs for t in b.ids] for ids, bs in zip(new_ids, branches)]
        trees = [[(b.at, len(b.ids)) for b in bs] for bs in branches]
        outs = self._run(seqs, feeds, [list(range(len(f))) for f in feeds], None, want_hidden, trees)
        result = []
        for out, ids, bs in zip(outs, new_ids, branches):
            cuts, start = [], len(ids)
            for b in bs:
                cuts.append(slice(start, start + len(b.ids)))
                start += len(b.ids)
            rows = [StepOutput(out.logits[cut], None if out.hidden is None else out.hidden[cut], out.kind)
                    for cut in [slice(0, len(ids))] + cuts]
            result.append((rows[0], rows[1:]))
        return result

    def _run(self, seqs: list[HFSequence], new_ids: list[list[int]], at: list[list[int]], top_k: int | None,
             want_hidden: bool, trees: list[list[tuple[int, int]]] | None) -> list[StepOutput]:
        """Admit the new sequences and run one pass (`_forward`) over their rows, in `seqs`' order."""
        with torch.inference_mode():
            admitted = [s for s in seqs if s.slot is None]
            self._pool.admit(admitted)
            try:
                rows = self._pass_rows(sorted(seqs, key=lambda s: s.slot), max(map(len, new_ids)))
                index = {id(s): i for i, s in enumerate(seqs)}  # rows riding along idle get no ids and no rows
                outs = self._forward(rows, [new_ids[index[id(r)]] if id(r) in index else [] for r in rows],
                                     [at[index[id(r)]] if id(r) in index else [] for r in rows], top_k, want_hidden,
                                     None if trees is None else
                                     [trees[index[id(r)]] if id(r) in index else [] for r in rows])
            except BaseException:  # a failed prefill holds nothing: the slots it took go back
                for seq in admitted:
                    self._pool.release(seq)
                raise
            by_seq = {id(r): out for r, out in zip(rows, outs)}
        return [by_seq[id(s)] for s in seqs]

    def draft(self, seqs: list[HFSequence], new_ids: list[list[int]], n_tokens: list[int],
              want_hidden: bool = False) -> list[DraftedBlock]:
        for seq, ids, n in zip(seqs, new_ids, n_tokens):
            if seq.length + len(ids) + n > self.max_length:
                raise ValueError(f"drafting would reach {seq.length + len(ids) + n} tokens; the context is "
                                 f"{self.max_length}")
        return draft_by_extending(self, seqs, new_ids, n_tokens, want_hidden)

    def truncate(self, seq: HFSequence, length: int) -> None:
        """Positions past `length` stay in the row, past its length: masked, and overwritten by the next tokens."""
        assert 0 <= length <= seq.length, f"truncate to {length} outside [0, {seq.length}]"
        seq.length = length

    def close(self, seq: HFSequence) -> None:
        if not seq.closed:
            self.open_sequences -= 1
        seq.closed = True
        if seq.slot is not None:
            with torch.inference_mode():
                self._pool.release(seq)

    def fork(self, seq: HFSequence, length: int) -> HFSequence:
        assert not seq.closed and 0 <= length <= seq.length, f"fork at {length} of a {seq.length}-token sequence"
        child = HFSequence()
        if length:
            with torch.inference_mode():
                self._pool.fork(seq, child, length)
            child.length = length
        self.open_sequences += 1
        return child

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input-embedding rows of token ids: [...] -> [..., hidden] float32 on the CPU."""
        with torch.inference_mode():
            return self.model.get_input_embeddings()(ids.to(self.device)).float().cpu()

    # -- one pass ---------------------------------------------------------------------------
    def _pass_rows(self, seqs: list[HFSequence], width: int) -> list[HFSequence]:
        """The pool rows a pass runs: `seqs` (in slot order), read in place when their slots are consecutive, or
        when scattered rows are long enough to be read in place one by one (`_in_place`). Otherwise a one-token
        pass over scattered slots (a drafting step some requests sit out) also runs the rows between them, idle,
        when they are at most as many: an idle row costs one position and a read of its KV, where gathering costs a
        copy of every member's KV per layer. Wider passes gather."""
        first, last = seqs[0].slot, seqs[-1].slot
        span = last - first + 1
        if span == len(seqs) or width > 1 or span > 2 * len(seqs) or self._in_place(seqs, width):
            return seqs
        return self._pool.rows[first : last + 1]

    def _in_place(self, seqs: list[HFSequence], width: int) -> bool:
        """Whether a pass over `seqs`, when their slots are scattered, reads them in place (`IN_PLACE_COLUMNS`)."""
        return self._group is not None and max(s.length for s in seqs) + width >= IN_PLACE_COLUMNS

    def _masks(self, query_pos: torch.Tensor, columns: int,
               tree: tuple[list[int], list[int], list[list[tuple[int, int]]]] | None = None
               ) -> torch.Tensor | dict[str, torch.Tensor]:
        """A 4D mask, or one per layer type for models that mix full and sliding-window layers; `tree`: the
        rows' (lengths, kept tokens, branch spans) of a pass with branches (`_tree_attend`)."""
        def build(window: int | None) -> torch.Tensor:
            if tree is None:
                return _attend(query_pos, columns, window)
            return _tree_attend(*tree, query_pos.shape[1], columns, window).to(query_pos.device)

        if not self.layer_types:
            return build(None)
        return {kind: build(self.sliding_window if "sliding" in kind else None) for kind in self.layer_types}

    def _forward(self, seqs: list[HFSequence], new_ids: list[list[int]], at: list[list[int]], top_k: int | None,
                 want_hidden: bool, trees: list[list[tuple[int, int]]] | None = None) -> list[StepOutput]:
        """One pass over `seqs` (in slot order; a row with no new ids idles): rows at the positions `at` of each.
        `trees[b]`: the (at, n) spans of row b's branches, whose tokens end its `new_ids[b]` (not kept)."""
        width, dev = max(len(ids) for ids in new_ids), self.device
        plan = self._pool.plan(seqs, width, in_place=self._in_place(seqs, width))
        spans = trees if trees is not None and any(trees) else None
        kept = [len(ids) - (sum(n for _, n in spans[b]) if spans else 0) for b, ids in enumerate(new_ids)]
        if spans is not None:
            input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in new_ids], dtype=torch.long)
            lengths = [seq.length for seq in seqs]
            position_ids = torch.tensor([list(range(n, n + k)) + [p for a, m in tree for p in range(a, a + m)]
                                         + [max(n + k - 1, 0)] * (width - len(ids))
                                         for n, k, tree, ids in zip(lengths, kept, spans, new_ids)], dtype=torch.long)
            mask: torch.Tensor | dict[str, torch.Tensor] = self._masks(position_ids, plan.used,
                                                                       tree=(lengths, kept, spans))
        elif width == 1 and not self.layer_types and all(new_ids):
            # decode: one token per row, whose columns up to its new position are all valid
            position_ids = torch.tensor([[seq.length] for seq in seqs], dtype=torch.long)
            input_ids = torch.tensor(new_ids, dtype=torch.long)
            mask = (torch.arange(plan.used, device=dev) <= position_ids.to(dev))[:, None, None, :]
        else:
            # built as Python lists and converted once: per-row tensor writes cost more than the SLM's pass at
            # batch 32
            ids_rows, pos_rows = [], []
            for seq, ids in zip(seqs, new_ids):
                n, pad = len(ids), width - len(ids)
                ids_rows.append(ids + [0] * pad)
                # padding (all of an idle row) takes the last real position
                pos_rows.append(list(range(seq.length, seq.length + n)) + [max(seq.length + n - 1, 0)] * pad)
            input_ids = torch.tensor(ids_rows, dtype=torch.long)
            position_ids = torch.tensor(pos_rows, dtype=torch.long)
            mask = self._masks(position_ids.to(dev), plan.used)
        threads = None if self._pass_threads is None else self._pass_threads.for_pass(self.n_parameters,
                                                                                     len(seqs) * width)
        # the asked positions of every row, flattened: row b's position p is b * width + p
        flat = torch.tensor([b * width + p for b, ps in enumerate(at) for p in ps], dtype=torch.long, device=dev)
        with torch_threads(threads):
            extra = {KV_SLOTS: plan.rows[:, 0]} if plan.in_place else {}
            masks = list(mask.values()) if isinstance(mask, dict) else [mask]
            if self._group is not None and len(masks) == 1 and width > 1:
                # one mask for every layer, laid out once per pass instead of repeated per query head in each
                # layer; a one-token pass repeats nothing (the testbed SLM's decode: 2.0 ms against 2.1 laid out)
                extra[GROUPED_MASK] = grouped_mask(masks[0], self._group, self.model.dtype)
            body = self._decoder(input_ids=input_ids.to(dev), position_ids=position_ids.to(dev), attention_mask=mask,
                                 use_cache=True, **{self._cache_kwarg: self._pool.cache(plan)}, **extra)
            hidden = body.last_hidden_state.reshape(len(seqs) * width, -1).index_select(0, flat)  # [n_rows, hidden]
            if len(flat):
                logits, kind = self._head.rows(hidden, top_k)  # [n_rows, vocab] float32 on the CPU
            else:
                logits = torch.empty((0, self.vocab_size))
                kind = RowKind.LOGITS if top_k is None else RowKind.TOPK_LOGPROBS
        self.forward_passes += 1
        for seq, k in zip(seqs, kept):
            seq.length += k
        hidden_cpu = hidden.float().cpu() if want_hidden else None
        outs, start = [], 0
        for ps in at:
            rows = slice(start, start + len(ps))
            outs.append(StepOutput(logits[rows], None if hidden_cpu is None else hidden_cpu[rows], kind))
            start += len(ps)
        return outs
