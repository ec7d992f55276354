"""A fake backend with hand-set logits: a pure function of the prefix, so exact distributions can be enumerated."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from r2r.serving.backends.base import (DraftedBlock, Positions, RowKind, StepOutput, draft_by_extending,
                                   resolve_rows, select_rows)


@dataclass
class FakeSequence:
    tokens: list[int] = field(default_factory=list)
    closed: bool = False

    @property
    def length(self) -> int:
        return len(self.tokens)


class FakeBackend:
    """Next-token logits = a seeded pseudo-random function of the whole prefix (temperature `sharpness`)."""

    def __init__(self, vocab: int, seed: int, sharpness: float = 2.0, hidden: int = 4, max_length: int = 64) -> None:
        self.vocab_size, self.hidden_size, self.max_length = vocab, hidden, max_length
        self.seed, self.sharpness = seed, sharpness
        self.model_id = self.fingerprint = f"fake-{seed}"
        self.forward_passes = self.open_sequences = 0
        self.n_parameters, self.exact_full_distribution, self.returned_top_k = 0, True, vocab
        self.drafts_in_one_call = False  # tests ask for DraftCalls.PER_BLOCK where they want `draft`

    def logits_for(self, prefix: list[int]) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}:{prefix}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.randn(self.vocab_size, generator=g) * self.sharpness

    def _outputs(self, seq: FakeSequence, n: int) -> StepOutput:
        rows = [self.logits_for(seq.tokens[: len(seq.tokens) - n + i + 1]) for i in range(n)]
        logits = torch.stack(rows)
        return StepOutput(logits=logits, hidden=logits[:, : self.hidden_size].clone(), kind=RowKind.LOGITS)

    def open(self, prompts: list[list[int]], want_hidden: bool = False, *, rows_at: list[Positions] | None = None,
             top_k: int | None = None) -> list[tuple[FakeSequence, StepOutput]]:
        assert top_k is None, "the fake returns full rows"
        self.forward_passes += 1
        seqs = [FakeSequence(list(p)) for p in prompts]
        self.open_sequences += len(seqs)
        at = resolve_rows(rows_at, prompts)
        return [(s, select_rows(self._outputs(s, len(s.tokens)), a)) for s, a in zip(seqs, at)]

    def extend(self, seqs: list[FakeSequence], new_ids: list[list[int]], want_hidden: bool = False, *,
               rows_at: list[Positions] | None = None, top_k: int | None = None) -> list[StepOutput]:
        assert top_k is None, "the fake returns full rows"
        self.forward_passes += 1
        for s, ids in zip(seqs, new_ids):
            assert not s.closed
            s.tokens += ids
        at = resolve_rows(rows_at, new_ids)
        return [select_rows(self._outputs(s, len(ids)), a) for s, ids, a in zip(seqs, new_ids, at)]

    def draft(self, seqs: list[FakeSequence], new_ids: list[list[int]], n_tokens: list[int],
              want_hidden: bool = False) -> list[DraftedBlock]:
        return draft_by_extending(self, seqs, new_ids, n_tokens, want_hidden)

    def truncate(self, seq: FakeSequence, length: int) -> None:
        assert 0 <= length <= len(seq.tokens)
        del seq.tokens[length:]

    def close(self, seq: FakeSequence) -> None:
        self.open_sequences -= not seq.closed
        seq.closed = True

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(ids % self.hidden_size, self.hidden_size).float()
