"""The backend contract.

A backend holds KV-cached sequences and runs them in batches. The routed decoder, the
label pipeline and the evals talk only to this protocol, never to transformers or sglang,
which is what lets the same decoding code run on the CPU default and on SGLang GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from router.rows import RowKind  # defined in router/ (the bottom of the import table) so the router can read it

__all__ = ["Backend", "RowKind", "SequenceHandle", "StepOutput", "open_by_extending"]


@dataclass
class StepOutput:
    """What one pass returns for one sequence: one row per appended position, of the kind `kind` says.

    LOGITS: full-vocabulary logits (the HF backend). TOPK_LOGPROBS: the top `returned_top_k` log-probabilities,
    normalised over the whole vocabulary, -inf elsewhere (SGLang); consumers use them as they are, never
    renormalised (`router.rows.row_logprobs`)."""

    logits: torch.Tensor  # [n_new, vocab] float32 rows of `kind`
    hidden: torch.Tensor | None  # [n_new, hidden] float32, last layer after the final norm; None unless asked
    kind: RowKind

    def __post_init__(self) -> None:
        assert self.logits.dim() == 2, f"logits must be [n_new, vocab], got {tuple(self.logits.shape)}"
        assert self.hidden is None or self.hidden.shape[0] == self.logits.shape[0], "hidden/logits row mismatch"
        assert isinstance(self.kind, RowKind), f"a StepOutput says what its rows are (a RowKind), got {self.kind!r}"


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

    def open(self, prompts: list[list[int]], want_hidden: bool = False) -> list[tuple[SequenceHandle, StepOutput]]:
        """Prefill one new sequence per prompt, in one batched pass."""
        ...

    def extend(self, seqs: list[SequenceHandle], new_ids: list[list[int]], want_hidden: bool = False) -> list[StepOutput]:
        """Append one or more tokens to each sequence in one batched pass."""
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


def open_by_extending(backend, new_sequence, prompts: list[list[int]], want_hidden: bool) -> list:
    """`open` for backends whose prefill is an extend of empty sequences (both backends here)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("cannot open a sequence with an empty prompt")
    seqs = [new_sequence() for _ in prompts]
    outs = backend.extend(seqs, prompts, want_hidden)
    backend.open_sequences += len(seqs)
    return list(zip(seqs, outs))
