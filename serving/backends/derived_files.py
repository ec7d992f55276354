"""Files derived from others: written atomically, and stamped with what they were made from.

Why stamps: a derived file (weights unpacked from a packed file, a shared-body model's assembled weights) is
current when it was made from today's sources. Mtimes cannot tell: copies that keep them (`cp -p`, `rsync -t`) can
make a stale file look newer than its source. The stamp, `.<name>.source` beside the file, records the sources'
content hash.
"""
from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, parts: list[bytes]) -> None:
    """Write through a per-process temporary file and rename: a run killed mid-write leaves the previous whole
    file, and concurrent writers never publish a partial or mixed one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        for part in parts:
            f.write(part)
    os.replace(tmp, path)


def source_stamp(path: Path) -> Path:
    """Where a derived file records what it was made from."""
    return path.with_name(f".{path.name}.source")


def read_stamp(path: Path) -> str | None:
    stamp = source_stamp(path)
    return stamp.read_text() if stamp.exists() else None


def write_stamp(path: Path, sources: str) -> None:
    write_atomic(source_stamp(path), [sources.encode()])
