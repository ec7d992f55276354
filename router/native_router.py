"""The folded router compiled to native code (`router/native/route_rows.c`) and called through ctypes.

Why: at batch 1 on a CPU the torch router is ~30 tiny ops, each costing its dispatch (~3-10 us, more right after an
SLM step has pushed the code out of cache), so scoring one row costs ~0.2 ms for ~0.03 ms of arithmetic. One call
into plain loops over the same folded weights costs ~0.03 ms (~0.08 ms with `route_rows`' bookkeeping). The torch
`FoldedRouter` stays the reference (scores agree to float rounding) and the path wherever this one does not apply:
on a GPU, at large batches (where torch's matrix kernels win), and where the library cannot be built or loaded.

The library is built at first use with the system C compiler (plain C, no torch headers: well under a second) into
the user cache, named by a hash of the source, the compiler, its flags and the CPU, so a machine never loads code
compiled for another.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from r2r.router.model import FoldedRouter
from r2r.router.rows import RowKind

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "native" / "route_rows.c"
MAX_BLOCKS = 16  # route_rows.c's MAX_BLOCKS


@dataclass(frozen=True)
class NativeBuild:
    """How the native router is compiled and where the library is kept."""

    compiler: str = "cc"
    flags: tuple[str, ...] = ("-O3", "-march=native", "-shared", "-fPIC")
    cache_dir: Path | None = None  # default: $XDG_CACHE_HOME/r2r/native, else ~/.cache/r2r/native
    max_rows: int = 8  # above this torch's batched matrix kernels are cheaper than per-row loops (measured)
    timeout_s: float = 120.0  # a compiler that hangs leaves the router on torch ops

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.timeout_s <= 0:
            raise ValueError(f"need max_rows >= 1 and timeout_s > 0, got {self.max_rows}, {self.timeout_s}")


def _cpu_id() -> str:
    """What the compiled code depends on about this CPU (`-march=native`)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        return next((line for line in lines if line.startswith(("flags", "Features"))), "") + platform.machine()
    return platform.machine() + platform.processor()


def build_library(cfg: NativeBuild) -> Path | None:
    """The compiled library (built now unless cached); None, logged, where it cannot be built here (no compiler, a
    failed compile, a cache that cannot be written)."""
    compiler = shutil.which(cfg.compiler)
    if compiler is None:
        log.warning("no C compiler (%s): the router runs on torch ops (slower at batch 1)", cfg.compiler)
        return None
    try:
        return _build(compiler, cfg)
    # OSError: cache or compiler unusable; RuntimeError: no home directory; ValueError: undecodable compiler output
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.strip()[-500:] if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        log.warning("could not build the native router (the router runs on torch ops): %s", detail)
        return None


def _build(compiler: str, cfg: NativeBuild) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True,
                             timeout=cfg.timeout_s).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, *cfg.flags, _cpu_id()]).encode())
    cache = cfg.cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "r2r" / "native"
    lib = cache / f"route_rows-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, then renamed: atomic for readers
        out = Path(tmp) / lib.name
        subprocess.run([compiler, *cfg.flags, "-o", str(out), str(SOURCE), "-lm"], capture_output=True, text=True,
                       check=True, timeout=cfg.timeout_s)
        os.replace(out, lib)
    return lib


_Floats = ctypes.POINTER(ctypes.c_float)


class _Router(ctypes.Structure):
    """route_rows.c's `Router`: sizes and pointers to the folded weights."""

    _fields_ = [("vocab", ctypes.c_int), ("hidden", ctypes.c_int), ("top_k", ctypes.c_int), ("width", ctypes.c_int),
                ("inner", ctypes.c_int), ("depth", ctypes.c_int),
                ("token_rows", _Floats), ("w_in", _Floats), ("head_w", _Floats),
                ("w1", _Floats * MAX_BLOCKS), ("b1", _Floats * MAX_BLOCKS), ("w2", _Floats * MAX_BLOCKS),
                ("b2", _Floats * MAX_BLOCKS), ("head_b", ctypes.c_float), ("eps", ctypes.c_float * (MAX_BLOCKS + 1))]


class NativeRouter:
    """A `FoldedRouter`'s scores (sigmoid applied) for a few rows of SLM outputs on the CPU, in one native call."""

    def __init__(self, folded: FoldedRouter, route_rows: Callable[..., None], max_rows: int) -> None:
        assert len(folded.blocks) <= MAX_BLOCKS, f"{len(folded.blocks)} blocks; the native router takes {MAX_BLOCKS}"
        self.max_rows = max_rows
        self._weights: list[torch.Tensor] = []  # kept alive: the struct points into them

        def ptr(t: torch.Tensor) -> ctypes._Pointer:
            t = t.detach().to("cpu", torch.float32).contiguous()
            self._weights.append(t)
            return ctypes.cast(t.data_ptr(), _Floats)

        r = _Router()
        r.vocab, r.width = folded.token_rows.shape
        assert folded.top_k <= r.vocab, f"top-{folded.top_k} of a {r.vocab}-token vocabulary"
        r.top_k, r.depth = folded.top_k, len(folded.blocks)
        r.hidden, r.inner = folded.w_in.shape[0] - folded.top_k, folded.blocks[0][0].shape[1]
        r.token_rows, r.w_in = ptr(folded.token_rows), ptr(folded.w_in)
        for i, (w1, b1, w2, b2) in enumerate(folded.blocks):
            r.w1[i], r.b1[i], r.w2[i], r.b2[i] = ptr(w1), ptr(b1), ptr(w2), ptr(b2)
        head_w, head_b = folded.head
        r.head_w, r.head_b = ptr(head_w.reshape(-1)), float(head_b)
        for i, eps in enumerate(folded.eps):
            r.eps[i] = eps
        self._router = r
        self._fn = route_rows
        self._fn.restype = None
        self._fn.argtypes = [ctypes.POINTER(_Router), ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_void_p]
        self.vocab, self.hidden_size = r.vocab, r.hidden

    def applies(self, logits: torch.Tensor, hidden: torch.Tensor) -> bool:
        """Whether these rows go through the native call: few rows of float32 CPU tensors of the router's sizes."""
        return (logits.dim() == hidden.dim() == 2 and logits.shape[0] == hidden.shape[0] <= self.max_rows
                and logits.device.type == hidden.device.type == "cpu" and logits.dtype == hidden.dtype == torch.float32
                and logits.shape[1] == self.vocab and hidden.shape[1] == self.hidden_size)

    def __call__(self, logits: torch.Tensor, hidden: torch.Tensor, kind: RowKind) -> torch.Tensor:
        """rows [rows, vocab] of `kind`, hidden [rows, hidden] (float32, CPU) -> scores [rows] in [0, 1]."""
        assert self.applies(logits, hidden), f"rows the native router does not take: {logits.shape}, {hidden.shape}"
        assert kind in (RowKind.LOGITS, RowKind.TOPK_LOGPROBS), f"unknown row kind {kind!r}"
        logits, hidden = logits.contiguous(), hidden.contiguous()
        scores = torch.empty(logits.shape[0], dtype=torch.float32)
        self._fn(ctypes.byref(self._router), logits.shape[0], logits.data_ptr(), int(kind == RowKind.TOPK_LOGPROBS),
                 hidden.data_ptr(), scores.data_ptr())
        return scores


def native_router(folded: FoldedRouter, cfg: NativeBuild) -> NativeRouter | None:
    """The native form of `folded`, or None (logged) where it cannot be built or loaded."""
    if len(folded.blocks) > MAX_BLOCKS:
        log.warning("a %d-block router runs on torch ops (the native router takes %d)", len(folded.blocks), MAX_BLOCKS)
        return None
    library = build_library(cfg)
    if library is None:
        return None
    try:
        route_rows = ctypes.CDLL(str(library)).route_rows
    except (OSError, AttributeError) as exc:  # e.g. a cache on a noexec mount, a damaged library
        log.warning("could not load %s (the router runs on torch ops; delete it to rebuild): %s", library, exc)
        return None
    return NativeRouter(folded, route_rows, cfg.max_rows)
