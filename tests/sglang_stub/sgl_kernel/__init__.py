"""Stand-in for `sgl_kernel`: see tests/sglang_stub/README.md. Every attribute raises when called."""
from __future__ import annotations

from sgl_kernel._stand_in import missing


def __getattr__(name: str):
    return missing(__name__, name)
