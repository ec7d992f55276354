"""Exact byte-level probabilities from a token LM (the cover-encoding sum, incrementally).

A token LM defines a distribution over byte strings. Definition used everywhere here: the
model's distribution restricted to canonical tokenizations, each next-token distribution
renormalized over the tokens that keep the sequence canonical (`TokenBytes.valid_after`).
Then the probability that the text starts with x is the sum over its *covers*: the canonical
sequences encode(x[:i]) + [v] whose last token v starts with x[i:] (and runs past the end of x
when i < len(x); at i = len(x) every token counts, specials as END). Only i within one token
length of the end can have a cover, so the sum has few terms.

`ByteState` keeps one *row* per live split i: the canonical tokens of x[:i], their canonical
log-probability and the next-token log-probs after them. x only grows, so a row never changes
once made. The state reads one backend sequence, its *trunk*: the context and the tokens of its
*root* (the row of the longest split, the canonical tokens of all of x). Pushing bytes makes the
new root and extends the trunk with its new tokens; every other new row is a `Branch` off the
trunk at the last token it shares with the root, computed in the same pass and not kept (the
Valid Covering Tree, with KV reuse). So a text's rows hold no KV of their own: a new row costs
its last few tokens, never a copy of the sequence, however long the text. Everything else (the
next-byte distribution, the prefix probability, a leaf to hand off from) is arithmetic over the
rows.

Copies (`fork_state`: a rollback point, the other model's state at each of several prefixes)
share the trunk instead of copying it. Each state trusts the trunk's first `held` positions: a
state that writes the trunk (truncates it, then appends its root's tokens) lowers every other
reader's `held` to where it wrote, and a reader re-feeds what it lost the next time it writes.
States sharing a trunk that are evaluated in the same pass all read it as branches; none writes.

The model in control of a routed decode continues token by token from a chosen leaf (which is
exact: sampling a leaf and continuing token-level samples the continuation of x); only a
handoff, when bytes written by the other model arrive, needs the rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from r2r.serving.backends.base import LAST_ROW, Branch
from r2r.serving.decoding.sampling import SamplingParams, processed_probs
from r2r.serving.byte_level.token_bytes import TokenBytes

N_BINS = 257  # bytes 0..255 and END


@dataclass
class Row:
    """The canonical tokens of text[:split] after the context."""

    split: int
    ids: list[int]
    cum: list[float]  # cum[j] = log P(ids[:j] | context); len(ids) + 1 entries
    stem: int = 0  # ids[:stem] are among the tokens the trunk holds after the context (a lower bound)
    next_logp: torch.Tensor | None = None  # [vocab] float64 canonical log-probs after ids; None while pending
    hidden: torch.Tensor | None = None  # the hidden state that predicted next_logp (when asked for)
    logits: torch.Tensor | None = None  # [vocab] the raw logits behind next_logp (router features)


@dataclass
class ByteState:
    """One model's view of one text: a fixed token context and the bytes after it."""

    context: list[int]
    trunk: Trunk
    held: int  # trunk positions that are this state's: trunk.seq[:held] holds (context + root.ids)[:held]
    text: bytes = b""
    rows: dict[int, Row] = field(default_factory=dict)
    own_boundary: bool = True  # text ends where the model's own last token ended: only that row is needed

    @property
    def root(self) -> Row:
        return self.rows[max(self.rows)]


@dataclass(eq=False)
class Trunk:
    """A backend sequence and the states that read it (see the module docstring)."""

    seq: object  # the backend's SequenceHandle
    readers: list[ByteState] = field(default_factory=list)


@dataclass(frozen=True)
class Leaf:
    split: int
    token: int
    logp: float  # log P(cover) - log P(text): the leaf's probability given the text


@dataclass
class LeafTable:
    """The leaves of one text: leaf k is token ids[k] after the canonical tokens of text[:splits[k]]."""

    text: bytes
    splits: torch.Tensor  # [n] long
    ids: torch.Tensor  # [n] long
    logp: torch.Tensor  # [n] float64 log P(leaf | text)
    vocab: TokenBytes

    def leaf(self, k: int) -> Leaf:
        return Leaf(int(self.splits[k]), int(self.ids[k]), float(self.logp[k]))

    def piece(self, k: int) -> bytes:
        """The bytes leaf k adds to the text (b"": end of text)."""
        return self.vocab.table[int(self.ids[k])][len(self.text) - int(self.splits[k]):]

    def probs(self, params: SamplingParams | None) -> torch.Tensor:
        """[n] what a draw samples from: the params' temperature / top-k / top-p over the leaves (none: T = 1)."""
        return torch.exp(self.logp) if params is None else processed_probs(self.logp.float(), params).double()

    def draw(self, probs: torch.Tensor | None, generator: torch.Generator | None) -> int:
        """A leaf index: the most probable leaf when `probs` is None (greedy), else a draw from `probs`."""
        if probs is None:
            return int(torch.argmax(self.logp))
        return int(torch.multinomial(probs, 1, generator=generator))

    def with_piece(self, piece: bytes) -> torch.Tensor:
        """[n] bool: the leaves that add exactly `piece` (one per split at most, save duplicate byte tokens)."""
        mask = torch.zeros_like(self.ids, dtype=torch.bool)
        for split in self.splits.unique().tolist():
            wanted = self.vocab.ids_of(self.text[split:] + piece) if piece or split == len(self.text) else []
            if wanted:
                mask |= (self.splits == split) & torch.isin(self.ids, torch.tensor(wanted, dtype=torch.long))
        return mask


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


class ByteLevelLM:
    """Exact next-byte distributions of a backend's model; see the module docstring."""

    def __init__(self, backend, tokenizer, canonical: bool = True, unchecked_mass: float = 1e-6,
                 max_checked: int = 2048) -> None:
        if not backend.exact_full_distribution:
            raise ValueError(f"{type(backend).__name__} returns only top-k log-probs; byte-level "
                             "probabilities need the full next-token distribution (use the hf backend)")
        self.backend = backend
        self.tokenizer = tokenizer
        self.canonical = canonical
        # canonicality is checked for the most probable tokens until at most `unchecked_mass` is left
        # unchecked (assumed canonical), or `max_checked` tokens per step (memoized per left token):
        # every token with mass on small vocabularies; the head of real 50k-260k vocabularies
        self.unchecked_mass, self.max_checked = unchecked_mass, max_checked
        self.vocab = TokenBytes.from_tokenizer(tokenizer, backend.vocab_size)
        self.max_token_len = self.vocab.max_len
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.default_context = [bos] if bos is not None else []

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, canonical: bool = True) -> ByteLevelLM:
        from transformers import AutoTokenizer

        from r2r.serving.backends.hf import HFBackend

        return cls(HFBackend(model_dir), AutoTokenizer.from_pretrained(model_dir), canonical)

    # -- one-shot queries ----------------------------------------------------------------------
    def next_byte_logprobs(self, prefix: bytes, context: list[int] | None = None) -> torch.Tensor:
        """[257] log P(next byte | the text starts with prefix); index 256 = end of text."""
        return self._once(prefix, context, self.distribution)

    def logprob(self, prefix: bytes, context: list[int] | None = None) -> float:
        """log P(the text starts with prefix)."""
        return self._once(prefix, context, self.prefix_logprob)

    def _once(self, prefix: bytes, context: list[int] | None, read):
        """`read` a fresh state pushed to `prefix`, then free it."""
        (state,) = self.start([context])
        try:
            self.push([state], [prefix])
            return read(state)
        finally:
            self.close(state)

    # -- incremental states --------------------------------------------------------------------
    def start(self, contexts: list[list[int] | None], want_hidden: bool = False) -> list[ByteState]:
        """One state per context (default: BOS, or EOS for models without one), in one pass."""
        if not contexts:
            return []
        contexts = [list(c) if c is not None else list(self.default_context) for c in contexts]
        if any(not c for c in contexts):
            raise ValueError("a byte-level state needs a non-empty token context (this tokenizer has no BOS/EOS)")
        opened = self.backend.open(contexts, want_hidden, rows_at=[LAST_ROW] * len(contexts))
        states = []
        for context, (seq, out) in zip(contexts, opened):
            row = Row(0, [], [0.0], 0, self._next_logp(out.logits[-1], None),
                      None if out.hidden is None else out.hidden[-1], out.logits[-1])
            state = ByteState(context, Trunk(seq), len(context), b"", {0: row})
            state.trunk.readers.append(state)
            states.append(state)
        return states

    def push(self, states: list[ByteState], chunks: list[bytes], want_hidden: bool = False) -> None:
        """Append bytes to each state and evaluate the new covers: one batched pass in all."""
        for state, chunk in zip(states, chunks):
            if chunk:
                state.text += chunk
                state.own_boundary = False
        self.evaluate(states, want_hidden)

    def evaluate(self, states: list[ByteState], want_hidden: bool = False) -> None:
        """Bring every needed row up to date in one batched forward pass (none if nothing is stale): a state's
        trunk takes its root's new tokens, its other stale rows are branches off it (`_plan`); where several
        states of the pass share a trunk, every row of theirs is a branch."""
        needed = [self._needed_splits(state) for state in states]  # the text does not change here
        by_trunk: dict[int, list[tuple[ByteState, list[int]]]] = {}
        for state, splits in zip(states, needed):
            if _stale(state, splits):
                by_trunk.setdefault(id(state.trunk), []).append((state, splits))
        groups = [[self._plan(s, splits, writes=len(group) == 1) for s, splits in group]
                  for group in by_trunk.values()]
        if groups:
            outs = self.backend.extend_with_branches(
                [g[0].state.trunk.seq for g in groups], [g[0].feed for g in groups],
                [[b for p in g for _, b in p.branches] for g in groups], want_hidden)
            for group, (own, branch_outs) in zip(groups, outs):
                rest = iter(branch_outs)
                for p in group:
                    ctx = len(p.state.context)
                    # a writer's root rows are the trunk's own; a reader's root is its first branch
                    self._finish_row(p.state, p.root, p.j0, own if p.feed else next(rest))
                    for row, branch in p.branches[0 if p.feed else 1:]:
                        j0 = branch.at + 1 - ctx
                        row.cum = p.root.cum[: j0 + 1]  # the log-probs of the tokens it shares with the root
                        self._finish_row(p.state, row, j0, next(rest))
        for state, splits in zip(states, needed):
            keep = set(splits)
            for split in [s for s in state.rows if s not in keep]:
                del state.rows[split]

    def close(self, state: ByteState) -> None:
        """Free the state (its trunk with its last reader)."""
        readers = state.trunk.readers
        if any(r is state for r in readers):
            readers[:] = [r for r in readers if r is not state]
            if not readers:
                self.backend.close(state.trunk.seq)
        state.rows.clear()

    # -- arithmetic over the rows --------------------------------------------------------------
    def leaves(self, state: ByteState) -> list[tuple[Row, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per row: (row, candidate ids, log P(cover) unnormalized, the byte each would produce next)."""
        n, out = len(state.text), []
        for split in self._needed_splits(state):
            row = state.rows[split]
            assert row.next_logp is not None, "evaluate() the state first"
            if split == n:
                ids = torch.arange(row.next_logp.shape[0])
                next_byte = self.vocab.first_byte
            else:
                ids = torch.tensor(self.vocab.starting_with(state.text[split:], longer=True), dtype=torch.long)
                next_byte = torch.tensor([self.vocab.table[v][n - split] for v in ids.tolist()], dtype=torch.long)
            weights = row.cum[-1] + row.next_logp[ids]
            live = weights > float("-inf")
            out.append((row, ids[live], weights[live], next_byte[live]))
        return out

    def prefix_logprob(self, state: ByteState) -> float:
        """log P(the text starts with state.text | context)."""
        return float(torch.logsumexp(torch.cat([w for _, _, w, _ in self.leaves(state)]), 0))

    def distribution(self, state: ByteState) -> torch.Tensor:
        """[257] float64 log-probs of the next byte (END = 256) given state.text."""
        acc = torch.full((N_BINS,), float("-inf"), dtype=torch.float64)
        for _, _, weights, next_byte in self.leaves(state):
            acc = torch.logaddexp(acc, _scatter_logsumexp(weights, next_byte, N_BINS))
        return acc - torch.logsumexp(acc, 0)

    def leaf_table(self, state: ByteState) -> LeafTable:
        """Every leaf of the state's text with its probability given the text."""
        table = self.leaves(state)
        weights = torch.cat([w for _, _, w, _ in table])
        return LeafTable(state.text, torch.cat([torch.full_like(ids, row.split) for row, ids, _, _ in table]),
                         torch.cat([ids for _, ids, _, _ in table]), weights - torch.logsumexp(weights, 0), self.vocab)

    def pick_leaf(self, state: ByteState, params: SamplingParams | None = None,
                  generator: torch.Generator | None = None) -> Leaf:
        """A cover of the state's text: the most probable one (greedy params, or no generator), else one
        drawn with its probability after the params' temperature / top-k / top-p (none: T = 1)."""
        table = self.leaf_table(state)
        greedy = generator is None or (params is not None and params.greedy)
        return table.leaf(table.draw(None if greedy else table.probs(params), generator))

    def piece(self, state: ByteState, leaf: Leaf) -> bytes:
        """The bytes `leaf` would add to the state's text (b"" for a special token: end of text)."""
        return self.vocab.table[leaf.token][len(state.text) - leaf.split:]

    def commit(self, state: ByteState, leaf: Leaf) -> bytes:
        """Continue from `leaf`: its token becomes the model's own; returns the bytes it adds."""
        row = state.rows[leaf.split]
        added = self.piece(state, leaf)
        lp = float(row.next_logp[leaf.token])
        # what the state holds of the trunk: what it shares with this row, which becomes the root
        state.held = min(state.held, len(state.context) + row.stem)
        # the row's lists grow in place (O(1) per token, not a copy of the text's tokens): no other row holds
        # them (forks and new rows copy), and this row leaves the state here
        row.ids.append(leaf.token)
        row.cum.append(row.cum[-1] + lp)
        new_row = Row(leaf.split + len(self.vocab.table[leaf.token]), row.ids, row.cum, row.stem)
        state.rows = {new_row.split: new_row}
        state.text += added
        state.own_boundary = True
        return added

    def fork_state(self, state: ByteState) -> ByteState:
        """An independent copy that reads the same trunk (no KV is copied; see the module docstring)."""
        rows = {split: Row(row.split, list(row.ids), list(row.cum), row.stem, row.next_logp, row.hidden, row.logits)
                for split, row in state.rows.items()}
        copy = ByteState(list(state.context), state.trunk, state.held, state.text, rows, state.own_boundary)
        state.trunk.readers.append(copy)
        return copy

    def resync_naive(self, state: ByteState, chunk: bytes) -> None:
        """The biased baseline: re-encode the whole text and condition on that token boundary.

        (What a decode-to-text, re-encode, continue handoff does; the KV of the shared token
        prefix is kept.) Evaluate the state afterwards."""
        root, ctx = state.root, len(state.context)
        state.text += chunk
        ids = self.vocab.encode(state.text)
        lcp = _common_prefix(ids, root.ids)
        lcp = min(lcp, state.held - ctx + 1, len(ids))
        state.held = ctx + lcp - 1
        cum = root.cum[: lcp + 1] + [0.0] * (len(ids) - lcp)  # the tail is recomputed by evaluate()
        state.rows = {len(state.text): Row(len(state.text), ids, cum, max(0, lcp - 1))}
        state.own_boundary = True

    # -- internals -----------------------------------------------------------------------------
    def _needed_splits(self, state: ByteState) -> list[int]:
        n = len(state.text)
        if state.own_boundary:
            return [state.root.split]
        splits = [n]
        for i in range(max(0, n - self.max_token_len + 1), n):
            if self.vocab.starting_with(state.text[i:], longer=True):
                splits.append(i)
        return sorted(splits)

    def _plan(self, state: ByteState, splits: list[int], writes: bool) -> _Plan:
        """The pass a state's stale rows (of its needed `splits`) need. The root (the longest split) is stale whenever any row is: bytes
        pushed make a new one, and a state's own pending tokens (after `commit`) are its root's until bytes
        arrive. The root's tokens follow the last one the state holds of the trunk and shares with them
        (re-fed: its row gives the next token's log-prob): written to the trunk when the state `writes`, else a
        branch. Every other stale row (new, or the old root with its pending tokens) branches off at the last
        token it shares with the root."""
        stale = _stale(state, splits)
        ctx, old, n = len(state.context), state.root, stale[-1]
        assert n == splits[-1] and all(s not in state.rows or s == old.split for s in stale), \
            f"stale rows {stale}: only the old root may be pending"
        if n in state.rows:  # the model's own tokens, pending
            root, lcp = old, len(old.ids)
        else:  # encoded from the old root's tokens: they share all but the last few (O(those few) here)
            ids, shared = self.vocab.encode_reusing(state.text, n, old.ids, old.split)
            lcp = shared + _common_prefix(ids[shared:], old.ids[shared:])
            root = Row(n, ids, [])
        at = min(state.held, ctx + lcp - 1, ctx + len(root.ids) - 1)
        state.held = at
        j0 = at + 1 - ctx  # the pass predicts root.ids[j0:], each after root.ids[:j]
        if root is not old:
            root.cum = old.cum[: j0 + 1]
        feed = _tokens_from(state.context, root.ids, at)
        branches = [] if writes else [(root, Branch(at, feed))]
        if writes:
            self.backend.truncate(state.trunk.seq, at)
            for reader in state.trunk.readers:
                reader.held = min(reader.held, at)
            for row in state.rows.values():  # the trunk's tokens past `at` are about to be the new root's
                row.stem = max(0, min(row.stem, at - ctx))
            state.held = ctx + len(root.ids)
        root.stem = max(0, state.held - ctx)
        for split in stale[:-1]:
            if split == old.split:
                row, common = old, lcp
            else:
                ids, shared = self.vocab.encode_reusing(state.text, split, old.ids, old.split)
                common = min(shared, lcp)
                common += _common_prefix(ids[common:], root.ids[common:])
                row = Row(split, ids, [])
            row.stem = min(common, root.stem)
            # at the last token it shares with the root that the state holds, re-fed for the next one's log-prob
            fork_at = min(ctx + common - 1, ctx + len(row.ids) - 1, state.held)
            branches.append((row, Branch(fork_at, _tokens_from(state.context, row.ids, fork_at))))
        return _Plan(state, root, j0, feed if writes else [], branches)

    def _finish_row(self, state: ByteState, row: Row, j0: int, out) -> None:
        # output k is the distribution after (context + ids)[: seq_len_before + k + 1]; the row owns its cum (new
        # rows and forks copy it), so it is cut and extended in place
        cum = row.cum
        del cum[j0 + 1:]
        for k in range(out.logits.shape[0] - 1):
            j = j0 + k
            lp = self._next_logp(out.logits[k], row.ids[j - 1] if j > 0 else None)
            cum.append(cum[-1] + float(lp[row.ids[j]]))
        row.next_logp = self._next_logp(out.logits[-1], row.ids[-1] if row.ids else None)
        # copies: a view would keep the pass's every row ([positions fed, vocab]) alive as long as the row
        row.hidden = None if out.hidden is None else out.hidden[-1].clone()
        row.logits = out.logits[-1].clone()
        state.rows[row.split] = row

    def _next_logp(self, logits: torch.Tensor, left: int | None) -> torch.Tensor:
        lp = torch.log_softmax(logits.double(), dim=-1)
        if not self.canonical:
            return lp
        head = torch.topk(lp, min(self.max_checked, lp.shape[0]))  # the probable head, in order
        tail = 1.0 - torch.cumsum(head.values.exp(), 0)  # mass after each head token
        n_check = min(int((tail > self.unchecked_mass).sum()) + 1, head.indices.shape[0])
        order = head.indices
        lp = lp.masked_fill(~self.vocab.valid_after(left, order[:n_check]), float("-inf"))
        return lp - torch.logsumexp(lp, 0)


@dataclass
class _Plan:
    """One state's part of an `evaluate` pass: its root, whose tokens root.ids[j0:] the pass predicts, as the
    trunk's new tokens (`feed`) or, for a state that does not write the trunk (no feed), as the first branch;
    then its other stale rows' branches."""

    state: ByteState
    root: Row
    j0: int
    feed: list[int]
    branches: list[tuple[Row, Branch]]


def _stale(state: ByteState, splits: list[int]) -> list[int]:
    """The splits whose rows are missing or pending."""
    return [s for s in splits if s not in state.rows or state.rows[s].next_logp is None]


def _tokens_from(context: list[int], ids: list[int], at: int) -> list[int]:
    """(context + ids)[at:] (at >= 0), without copying the part before `at`."""
    return context[at:] + ids[max(0, at - len(context)):]


def _scatter_logsumexp(values: torch.Tensor, index: torch.Tensor, bins: int) -> torch.Tensor:
    out = torch.full((bins,), float("-inf"), dtype=torch.float64)
    if values.numel() == 0:
        return out
    peak = values.max()
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.exp(values - peak))
    return torch.log(mass) + peak
