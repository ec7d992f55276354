"""`r2r bench long` on tiny shapes: every window measured, memory read, the JSON shaped as the issue asks."""
from __future__ import annotations

from r2r.evals.bench.gpu_costs import Shape
from r2r.evals.bench.long import LongBenchConfig, bench_long, kv_bytes_per_token

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

