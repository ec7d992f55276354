"""How many CPU threads a forward pass runs on, chosen per pass by its size.

A small pass (a decode step of a few rows) is bound by per-op overhead or memory bandwidth, where more threads only
add synchronization; a wide pass (the LLM catching up many rows of several tokens each) is bound by compute and
runs faster on more. So a serving process runs torch on one thread and lends a wide pass the other cores, which
otherwise serve HTTP (the measurements behind this: docs/perf-notes.md, "Server throughput"). torch's thread count
is process-wide: only the decoding loop's thread may run passes under this.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PassThreads:
    """Passes estimated at `wide_flops` or more (2 x parameters x positions computed) run on
    `threads` threads, smaller ones on one."""

    threads: int
    wide_flops: float = 5e8

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.wide_flops < 0:
            raise ValueError(f"wide_flops must be non-negative, got {self.wide_flops}")

    def for_pass(self, parameters: int, positions: int) -> int:
        return self.threads if 2 * parameters * positions >= self.wide_flops else 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on n torch threads (None: as set), then restore the previous count."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
