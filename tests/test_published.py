"""Snapshots publish immutable prefixes of an append-only record: O(new steps) per step, never a copy of the
output, and a snapshot already handed out never changes as the record grows."""
from __future__ import annotations

import pytest

from r2r.serving.decoding.generation import Generation, Source
from r2r.serving.http.published import Published, Record
from r2r.serving.http.scheduler import snapshot_of


def _gen(n: int, pieces: int | None = None) -> Generation:
    gen = Generation(token_ids=list(range(n)), sources=[Source.SLM] * n, scores=[0.5] * n,
                     logprobs=[-1.0] * n, top_logprobs=[[(1, -0.5)]] * n)
    if pieces is not None:
        gen.pieces = [bytes([97 + i % 26]) for i in range(pieces)]
    return gen


def test_a_published_prefix_reads_like_a_tuple_and_never_changes() -> None:
    items = [1, 2, 3]
    view = Published(items, 2)
    items += [4, 5]
    assert len(view) == 2 and view == (1, 2) and (1, 2) == view and list(view) == [1, 2]
    assert view[:] == (1, 2) and view[1:] == (2,) and view[-1] == 2 and view[::-1] == (2, 1)
    assert view != (1, 2, 3) and 3 not in view
    with pytest.raises(IndexError):
        view[2]
    with pytest.raises(TypeError):
        view[0] = 7  # type: ignore[index]


def test_snapshots_share_one_record_and_each_keeps_its_prefix() -> None:
    """Each step appends only the new steps to the ticket's record; earlier snapshots still read what they read.
    A byte-level engine's draft pieces (past its written tokens) are not published."""
    record, gen = Record(), _gen(3, pieces=5)
    first = snapshot_of(record, gen, with_logprobs=True)
    gen.token_ids += [3, 4]
    gen.sources += [Source.LLM] * 2
    gen.scores += [0.9] * 2
    gen.logprobs += [-2.0] * 2
    gen.top_logprobs += [[(2, -0.1)]] * 2
    second = snapshot_of(record, gen, with_logprobs=True, result=True)
    assert first.token_ids == (0, 1, 2) and first.sources == ("slm",) * 3 and first.pieces == (b"a", b"b", b"c")
    assert second.token_ids == (0, 1, 2, 3, 4) and second.sources[3:] == ("llm", "llm") and second.result is gen
    assert second.pieces == (b"a", b"b", b"c", b"d", b"e") and second.top_logprobs[4] == ((2, -0.1),)
    assert record.token_ids is second.token_ids._items, "a snapshot reads the record, it does not copy it"
    assert snapshot_of(Record(), _gen(2), with_logprobs=False).logprobs == ()
