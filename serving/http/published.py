"""What the scheduler has published of one output: append-only lists, handed to handlers as immutable prefixes.

A snapshot per step that copied the whole output (tokens, sources, scores, pieces, log-probs) would cost O(output)
per step and O(output^2) per stream. Instead each ticket keeps one `Record` that the loop thread only appends to,
O(new entries) per step, and a snapshot holds `Published` views of its first n entries: entries below n never
change, so a handler on another thread reads a fixed, consistent prefix (an append never moves what a list
index reads, under the GIL).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from r2r.serving.decoding.generation import Generation


class Published(Sequence):
    """The first `n` entries of an append-only list, read-only: indexing, slicing (a tuple), iteration, equality
    with any sequence of the same entries."""

    __slots__ = ("_items", "_n")

    def __init__(self, items: list, n: int) -> None:
        assert 0 <= n <= len(items), f"a prefix of {n} entries of a list of {len(items)}"
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step > 0:
                return tuple(self._items[start:stop:step])
            return tuple(self._items[k] for k in range(start, stop, step))  # stop may be -1: not an index here
        if not -self._n <= i < self._n:
            raise IndexError(f"index {i} of {self._n} published entries")
        return self._items[i % self._n]

    def __iter__(self) -> Iterator:
        return islice(self._items, self._n)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(other) == self._n and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  (equal to tuples, but not hashable like them)

    def __repr__(self) -> str:
        return f"Published({list(self)!r})"


@dataclass
class Record:
    """One ticket's published output, appended to by the loop thread only."""

    token_ids: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pieces: list[bytes] | None = None  # byte-level engines: the bytes each step wrote
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)

    def catch_up(self, gen: Generation, with_logprobs: bool) -> None:
        """Append what `gen` has written past what is recorded: O(new entries). Only written steps: a byte-level
        engine's draft pieces past its tokens are not."""
        n = len(self.token_ids)
        self.token_ids += gen.token_ids[n:]
        self.sources += [s.value for s in gen.sources[len(self.sources):]]
        self.scores += gen.scores[len(self.scores):]
        if gen.pieces is not None:
            if self.pieces is None:
                self.pieces = []
            self.pieces += gen.pieces[len(self.pieces):len(gen.token_ids)]
        if with_logprobs:
            self.logprobs += gen.logprobs[len(self.logprobs):]
            self.top_logprobs += [tuple(row) for row in gen.top_logprobs[len(self.top_logprobs):]]

    def view(self) -> dict[str, Published | None]:
        """The fields of a snapshot: each list as it stands now, as an immutable prefix."""
        return {"token_ids": Published(self.token_ids, len(self.token_ids)),
                "sources": Published(self.sources, len(self.sources)),
                "scores": Published(self.scores, len(self.scores)),
                "pieces": None if self.pieces is None else Published(self.pieces, len(self.pieces)),
                "logprobs": Published(self.logprobs, len(self.logprobs)),
                "top_logprobs": Published(self.top_logprobs, len(self.top_logprobs))}
