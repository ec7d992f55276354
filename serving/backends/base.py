"""The backend contract.

A backend holds KV-cached sequences and runs them in batches. The routed decoder, the
label pipeline and the evals talk only to this protocol, never to transformers or sglang,
which is what lets the same decoding code run on the CPU default and on SGLang GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from r2r.router.rows import RowKind  # defined in router/ (the bottom of the import table) so the router can read it

__all__ = ["ALL_ROWS", "Backend", "Branch", "DraftedBlock", "LAST_ROW", "NO_ROWS", "Positions", "RowKind",
           "SequenceHandle", "StepOutput", "branch_by_forking", "draft_by_extending", "open_by_extending",
           "resolve_rows", "select_rows"]

# Which of one sequence's appended positions a pass returns rows for: indices into the tokens that call appends to
# it (negative ones count from the end, as in Python), rows coming back in that order; None: every appended position.
# A pass computes the next-token rows of these positions only and moves only them off the device: at a 152k
# vocabulary a row is 0.6 MB, so a catch-up over a few thousand tokens that reads none must not make any.
Positions = tuple[int, ...] | None
ALL_ROWS: Positions = None  # every appended position (teacher forcing, byte-level covers)
LAST_ROW: Positions = (-1,)  # the row after the last appended token (prefill, decode)
NO_ROWS: Positions = ()  # a pure catch-up: KV only


@dataclass
class StepOutput:
    """What one pass returns for one sequence: one row per position asked for (`Positions`), in the order asked,
    of the kind `kind` says.

    LOGITS: full-vocabulary logits (the HF backend). TOPK_LOGPROBS: the top-k log-probabilities, normalised over
    the whole vocabulary, -inf elsewhere (SGLang always; the HF backend when a pass asks for `top_k`); consumers
    use them as they are, never renormalised (`router.rows.row_logprobs`)."""

    logits: torch.Tensor  # [n_rows, vocab] float32 rows of `kind`
    hidden: torch.Tensor | None  # [n_rows, hidden] float32, last layer after the final norm, at the same positions
    kind: RowKind

    def __post_init__(self) -> None:
        assert self.logits.dim() == 2, f"logits must be [n_new, vocab], got {tuple(self.logits.shape)}"
        assert self.hidden is None or self.hidden.shape[0] == self.logits.shape[0], "hidden/logits row mismatch"
        assert isinstance(self.kind, RowKind), f"a StepOutput says what its rows are (a RowKind), got {self.kind!r}"


@dataclass
class DraftedBlock:
    """What `Backend.draft` returns for one sequence."""

    tokens: list[int]  # [n] the greedy drafts d_1..d_n
    out: StepOutput  # [n] rows: row j is the one d_{j+1} was chosen from (after the last new token, then each draft)

    def __post_init__(self) -> None:
        assert len(self.tokens) == self.out.logits.shape[0] >= 1, \
            f"{len(self.tokens)} drafts for {self.out.logits.shape[0]} rows"


@dataclass(frozen=True)
class Branch:
    """A continuation of a sequence's first `at` positions by `ids`, computed in a pass and not kept: one row per
    token of `ids`. A byte-level text's rows are its canonical tokens up to each split, which share all but their
    last few tokens with the sequence the text's state holds; as branches they cost those few tokens, where a
    fork per row copies the whole sequence's KV."""

    at: int
    ids: list[int]

    def __post_init__(self) -> None:
        assert self.at >= 0 and self.ids, f"a branch at {self.at} with {len(self.ids)} tokens"


class SequenceHandle(Protocol):
    """Opaque per-sequence state owned by a backend."""

    @property
    def length(self) -> int: ...


class Backend(Protocol):
    """KV-cached batched forward passes over token ids."""

    vocab_size: int
    hidden_size: int
    max_length: int  # the model's context length in tokens
    model_id: str
    fingerprint: str  # content hash of the weights, recorded in labels and router checkpoints
    n_parameters: int  # the model's parameter count (average activated parameters in eval reports)
    exact_full_distribution: bool  # rows are RowKind.LOGITS over the whole vocabulary; False: TOPK_LOGPROBS rows
    returned_top_k: int  # how many of the most likely tokens each row holds (vocab_size for full rows)
    open_sequences: int  # opened and not yet closed: what leak checks watch
    drafts_in_one_call: bool  # `draft` is one engine call (SGLang), not one pass per token: draft whole blocks

    def open(self, prompts: list[list[int]], want_hidden: bool = False, *, rows_at: list[Positions] | None = None,
             top_k: int | None = None) -> list[tuple[SequenceHandle, StepOutput]]:
        """Prefill one new sequence per prompt, in one batched pass; rows as `extend` returns them."""
        ...

    def extend(self, seqs: list[SequenceHandle], new_ids: list[list[int]], want_hidden: bool = False, *,
               rows_at: list[Positions] | None = None, top_k: int | None = None) -> list[StepOutput]:
        """Append one or more tokens to each sequence in one batched pass.

        `rows_at[i]`: the positions of new_ids[i] whose next-token rows (and hidden states, when `want_hidden`)
        sequence i gets back; None for the whole list: every appended position of every sequence. `top_k`: None
        for full-vocabulary logits where the backend has them (`exact_full_distribution`; otherwise its top
        `returned_top_k` log-probs); k <= returned_top_k for RowKind.TOPK_LOGPROBS rows of the k most likely
        tokens."""
        ...

    def draft(self, seqs: list[SequenceHandle], new_ids: list[list[int]], n_tokens: list[int],
              want_hidden: bool = False) -> list[DraftedBlock]:
        """Greedy drafting: append new_ids[i] to sequence i (as `extend`), then n_tokens[i] argmax tokens.

        d_1 is the argmax of the row after the last new token, d_{j+1} that of the row after d_j. Returns each
        sequence's d_1..d_n and the n rows they were chosen from; the sequence then holds new_ids and
        d_1..d_{n-1} (d_n is not fed, like a speculative block's last draft); its length plus len(new_ids) plus
        n must fit the context. Equal to `extend(new_ids)` followed by n - 1 one-token extends with each row's
        argmax (`draft_by_extending`, which is how the HF backend does it); SGLang does it in one engine call."""
        ...

    def extend_with_branches(self, seqs: list[SequenceHandle], new_ids: list[list[int]],
                             branches: list[list[Branch]], want_hidden: bool = False
                             ) -> list[tuple[StepOutput, list[StepOutput]]]:
        """`extend(seqs, new_ids)` with a row for every appended position and, in the same pass, each sequence's
        branches over what it holds after that: branch b of sequence i continues its first b.at positions (at
        most its new length) with b.ids and gets a row per token; no branch is kept. new_ids[i] may be empty
        where branches[i] is not (a sequence only read). Per sequence: (its rows, each branch's rows). Equal to
        `branch_by_forking`, which is how backends without tree masks do it."""
        ...

    def truncate(self, seq: SequenceHandle, length: int) -> None:
        """Drop the cached positions at and past `length`."""
        ...

    def close(self, seq: SequenceHandle) -> None:
        """Free the sequence's memory; the handle may not be used again."""
        ...

    def fork(self, seq: SequenceHandle, length: int) -> SequenceHandle:
        """A new sequence holding a copy of `seq`'s first `length` positions (no forward pass).

        Byte-level conditioning evaluates several tokenizations that share a prefix: each is a
        fork of one cached sequence, so the shared prefix is never recomputed."""
        ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input-embedding rows of token ids: [...] -> [..., hidden] float32 (router features)."""
        ...


def resolve_rows(rows_at: list[Positions] | None, new_ids: list[list[int]]) -> list[list[int]]:
    """Each sequence's asked positions as indices in [0, len(new_ids[i])), in the order asked."""
    if rows_at is None:
        return [list(range(len(ids))) for ids in new_ids]
    assert len(rows_at) == len(new_ids), f"{len(rows_at)} row selections for {len(new_ids)} sequences"
    resolved = []
    for at, ids in zip(rows_at, new_ids):
        n = len(ids)
        idx = list(range(n)) if at is None else [p + n if p < 0 else p for p in at]
        assert all(0 <= p < n for p in idx) and len(set(idx)) == len(idx), \
            f"positions {at} are not distinct positions of {n} appended tokens"
        resolved.append(idx)
    return resolved


def select_rows(out: StepOutput, at: list[int]) -> StepOutput:
    """The rows of a pass's every-position output at `at` (backends that compute every row anyway: the fakes)."""
    idx = torch.tensor(at, dtype=torch.long)
    return StepOutput(out.logits[idx], None if out.hidden is None else out.hidden[idx], out.kind)


def open_by_extending(backend, new_sequence, prompts: list[list[int]], want_hidden: bool,
                      rows_at: list[Positions] | None = None, top_k: int | None = None) -> list:
    """`open` for backends whose prefill is an extend of empty sequences (both backends here)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("cannot open a sequence with an empty prompt")
    seqs = [new_sequence() for _ in prompts]
    outs = backend.extend(seqs, prompts, want_hidden, rows_at=rows_at, top_k=top_k)
    backend.open_sequences += len(seqs)
    return list(zip(seqs, outs))


def draft_by_extending(backend, seqs: list, new_ids: list[list[int]], n_tokens: list[int],
                       want_hidden: bool) -> list[DraftedBlock]:
    """`draft` as batched extends: one pass for the new ids, then one per further draft (the rows of the
    sequences still drafting). The reference the SGLang backend's one-call `draft` is tested against."""
    assert len(seqs) == len(new_ids) == len(n_tokens), "one token list and one draft count per sequence"
    assert all(new_ids) and all(n >= 1 for n in n_tokens), f"new ids and at least one draft each: {n_tokens}"
    outs: list[list[StepOutput]] = [[] for _ in seqs]
    tokens: list[list[int]] = [[] for _ in seqs]
    live, feeds = list(range(len(seqs))), [list(ids) for ids in new_ids]
    while live:
        for i, last in zip(live, backend.extend([seqs[i] for i in live], feeds, want_hidden,
                                                rows_at=[LAST_ROW] * len(live))):
            outs[i].append(last)
            tokens[i].append(int(torch.argmax(last.logits[0])))
        live = [i for i in live if len(tokens[i]) < n_tokens[i]]
        feeds = [[tokens[i][-1]] for i in live]
    return [DraftedBlock(t, StepOutput(torch.cat([o.logits for o in rows]),
                                       torch.cat([o.hidden for o in rows]) if want_hidden else None, rows[0].kind))
            for t, rows in zip(tokens, outs)]


def branch_by_forking(backend, seqs: list, new_ids: list[list[int]], branches: list[list[Branch]],
                      want_hidden: bool = False) -> list[tuple[StepOutput, list[StepOutput]]]:
    """`extend_with_branches` as an extend, then a fork per branch extended by its ids and closed: a copy of
    each branch's prefix (what the HF backend's one-pass tree avoids, and the reference it is tested against)."""
    assert len(seqs) == len(new_ids) == len(branches), "one token list and one branch list per sequence"
    growing = [i for i, ids in enumerate(new_ids) if ids]
    grown = dict(zip(growing, backend.extend([seqs[i] for i in growing], [new_ids[i] for i in growing], want_hidden)
                     if growing else []))
    jobs = [(i, b) for i, bs in enumerate(branches) for b in bs]
    for i, b in jobs:
        assert b.at <= seqs[i].length, f"a branch at {b.at} of a {seqs[i].length}-position sequence"
    forks = [backend.fork(seqs[i], b.at) for i, b in jobs]
    try:
        branch_outs = backend.extend(forks, [b.ids for _, b in jobs], want_hidden) if jobs else []
    finally:
        for fork in forks:
            backend.close(fork)
    per_seq: list[list[StepOutput]] = [[] for _ in seqs]
    for (i, _), out in zip(jobs, branch_outs):
        per_seq[i].append(out)
    kind = RowKind.LOGITS if backend.exact_full_distribution else RowKind.TOPK_LOGPROBS
    none = StepOutput(torch.empty((0, backend.vocab_size)),
                      torch.empty((0, backend.hidden_size)) if want_hidden else None, kind)
    return [(grown.get(i, none), per_seq[i]) for i in range(len(seqs))]
