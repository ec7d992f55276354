"""Lossless compact storage for committed model weights: `model.safetensors.packed` beside the model.

Why: the repository must hold the testbed models, in as few bytes as possible. Float weights do not compress as
they are, but their bytes split by position do: the byte holding the sign and the exponent's high bits takes few
values and compresses well under zlib; the mantissa bytes are noise and are stored as they are (the sizes it gives:
docs/perf-notes.md, "Testbed pair"). Unpacking restores the exact bytes (sha256 checked), so a packed model's
fingerprint, outputs and every number measured on it are those of the original file.

Layout: 8-byte little-endian length, a JSON header (`format`, `sha256` and `size` of the original, `prefix`: the
length of the safetensors header kept as is, `width`: bytes per element, `planes`: each plane's stored length and
whether it is zlib-compressed), the safetensors header, then one plane per byte position of the tensor data.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np

from r2r.serving.backends.derived_files import read_stamp, write_atomic, write_stamp

SUFFIX = ".packed"
_FORMAT = "r2r-byte-planes-1"
_WIDTHS = {"BF16": 2, "F16": 2, "F32": 4}


def _safetensors_layout(data: bytes) -> tuple[int, int]:
    """(prefix length, bytes per element) of a safetensors file whose tensors all share one float width."""
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    widths = {_WIDTHS.get(d) for d in dtypes}
    if len(widths) != 1 or None in widths:
        raise ValueError(f"cannot pack tensors of dtypes {sorted(dtypes)}: one of {sorted(_WIDTHS)} expected")
    return 8 + header_len, widths.pop()


def pack_file(path: Path) -> Path:
    """Write `<path>.packed` (lossless) and return it; the original is left in place."""
    data = path.read_bytes()
    prefix, width = _safetensors_layout(data)
    body = np.frombuffer(data, dtype=np.uint8, offset=prefix)
    if body.size % width:
        raise ValueError(f"{path}: tensor data is not a whole number of {width}-byte elements")
    columns = body.reshape(-1, width)
    planes, stored = [], []
    for i in range(width):
        plane = columns[:, i].tobytes()
        packed = zlib.compress(plane, 9)
        compressed = len(packed) < len(plane)
        planes.append([len(packed) if compressed else len(plane), compressed])
        stored.append(packed if compressed else plane)
    sha256 = hashlib.sha256(data).hexdigest()
    header = json.dumps({"format": _FORMAT, "sha256": sha256, "size": len(data), "prefix": prefix, "width": width,
                         "planes": planes}).encode()
    out = path.with_name(path.name + SUFFIX)
    write_atomic(out, [struct.pack("<Q", len(header)), header, data[:prefix], *stored])
    write_stamp(path, sha256)
    return out


def unpack_file(packed: Path) -> Path:
    """Restore the original file beside `packed` (exact bytes, checked) and return its path."""
    data = packed.read_bytes()
    header, pos = _read_header(packed, data)
    prefix, width = data[pos:pos + header["prefix"]], header["width"]
    pos += header["prefix"]
    n = (header["size"] - header["prefix"]) // width
    columns = np.empty((n, width), dtype=np.uint8)
    for i, (length, compressed) in enumerate(header["planes"]):
        chunk = data[pos:pos + length]
        pos += length
        try:
            columns[:, i] = np.frombuffer(zlib.decompress(chunk) if compressed else chunk, dtype=np.uint8)
        except (zlib.error, ValueError) as exc:
            raise ValueError(f"{packed}: byte plane {i} is corrupt ({exc})") from exc
    restored = prefix + columns.tobytes()
    if hashlib.sha256(restored).hexdigest() != header["sha256"]:
        raise ValueError(f"{packed}: unpacked bytes do not match the recorded sha256: corrupt")
    out = packed.with_name(packed.name[:-len(SUFFIX)])
    write_atomic(out, [restored])
    write_stamp(out, header["sha256"])
    return out


def pack_weights(model_dir: str | Path) -> list[Path]:
    """Pack every `*.safetensors` of a model directory (after training; the packed files are what is committed)."""
    return [pack_file(path) for path in sorted(Path(model_dir).glob("*.safetensors"))]


def unpack_weights(model_dir: str | Path) -> None:
    """Restore each packed weight file of a directory whose original is missing or was not restored from (or
    packed into) this packed file's content (a checkout that brings new weights), so every loader reads a plain
    HF directory. A plain file changed by hand after that is left alone."""
    for packed in sorted(Path(model_dir).glob(f"*.safetensors{SUFFIX}")):
        plain = packed.with_name(packed.name[:-len(SUFFIX)])
        if not plain.exists() or read_stamp(plain) != _recorded_sha256(packed):
            unpack_file(packed)


def _recorded_sha256(packed: Path) -> str:
    with packed.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        return _read_header(packed, head + f.read(length))[0]["sha256"]


def _read_header(packed: Path, data: bytes) -> tuple[dict, int]:
    """A packed file's JSON header and where the rest starts; ValueError naming the file when it is not one (a
    Git LFS pointer, a truncated copy)."""
    try:
        header_len = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + header_len])
        if header.get("format") != _FORMAT:
            raise ValueError
    except (struct.error, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{packed}: not an {_FORMAT} file (truncated, or a Git LFS pointer?)") from exc
    return header, 8 + header_len
