"""`r2r bench long` on tiny shapes: every window measured, memory read, the JSON shaped as the issue asks."""
from __future__ import annotations

from dataclasses import dataclass

from r2r.evals.bench.gpu_costs import Shape
from r2r.evals.bench.long import BatchClock, LongBenchConfig, bench_long, kv_bytes_per_token

TINY = (Shape("tiny-slm", 32, 1, 2, 1, 64, 300), Shape("tiny-llm", 64, 2, 4, 2, 128, 300))


def test_long_bench_reports_every_window_and_memory() -> None:
    cfg = LongBenchConfig(batch_sizes=(1, 3), new_tokens=96, window=16, share=0.3, prompt_tokens=8, shapes=TINY)
    result = bench_long(cfg)
    for batch in (1, 3):
        entry = result[f"batch_{batch}"]
        assert len(entry["ms_per_token_by_window"]) == 96 // 16, "one figure per full window of output"
        assert all(ms > 0 for ms in entry["ms_per_token_by_window"])
        assert 0.0 < entry["llm_share"] < 1.0 and entry["peak_rss_gib"] > 0
        assert entry["weights_plus_kv_gib"] >= 0 and entry["last_over_second_window"] > 0
        assert entry["passes"]["slm"] >= 96 and 0 < entry["passes"]["llm"] < entry["passes"]["slm"]
        attention = entry["attention_ms_per_token"]
        assert 0 < attention["second"] and 0 < attention["last"] and entry["attention_share_last_window"] > 0
    assert result["meta"]["kv_bytes_per_token"]["tiny-llm"] == kv_bytes_per_token(TINY[1]) == 2 * 2 * 2 * 16 * 4


@dataclass
class _HeldRows:
    """What BatchClock reads of the SLM backend: each open sequence's length."""

    held_lengths: list[int]


def test_clock_follows_the_batch_mean_and_counts_closed_rows_as_finished() -> None:
    slm = _HeldRows([])
    clock = BatchClock(slm, batch=2, prompt_tokens=4, total=8)
    steps = [[4, 4], [6, 5], [8, 6], [12, 7], [9]]  # held lengths per pass: the first row runs ahead, then closes
    for lengths in steps:
        slm.held_lengths = lengths
        clock(None, (), {})
    # by hand: mean of (length - prompt), a closed row at total; never backwards
    assert [pos for _, pos in clock.events] == [0.0, 0.0, 1.5, 3.0, 5.5, 6.5]
    assert clock.tail(clock.events[-1][0] + 2.0) == {"positions_when_first_finished": [5], "tail_s": 2.0}
    assert len(clock.ms_per_token_by_window(2)) == 3, "windows [0,2) [2,4) [4,6): the mean has not reached 8"
