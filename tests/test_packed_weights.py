"""Packed weight files restore the original bytes exactly, and loaders see a plain model directory."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from r2r.serving.backends.fingerprint import model_fingerprint
from r2r.serving.backends.hf import HFBackend
from r2r.serving.backends.packed_weights import SUFFIX, pack_weights, unpack_file, unpack_weights

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model_dir(request: pytest.FixtureRequest, tiny_models: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny qwen2 model (packing writes into it) saved in each stored dtype."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp(request.param) / "model"
    shutil.copytree(tiny_models["qwen2"], path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.to(getattr(torch, request.param)).save_pretrained(path)
    return path


def test_pack_then_unpack_restores_every_byte(model_dir: Path, tmp_path: Path) -> None:
    original = (model_dir / WEIGHTS).read_bytes()
    (packed,) = pack_weights(model_dir)
    assert packed.name == WEIGHTS + SUFFIX
    assert packed.stat().st_size < len(original)  # the sign/exponent byte plane compresses
    work = tmp_path / "model"
    shutil.copytree(model_dir, work, ignore=shutil.ignore_patterns(WEIGHTS))
    unpack_weights(work)
    assert (work / WEIGHTS).read_bytes() == original


def test_backend_loads_a_packed_only_directory_as_the_original(model_dir: Path, tmp_path: Path) -> None:
    pack_weights(model_dir)
    work = tmp_path / "model"
    shutil.copytree(model_dir, work, ignore=shutil.ignore_patterns(WEIGHTS))
    packed_backend, plain_backend = HFBackend(work), HFBackend(model_dir)
    assert packed_backend.fingerprint == plain_backend.fingerprint == model_fingerprint(model_dir)
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.equal(packed_backend.model(ids).logits, plain_backend.model(ids).logits)


def test_another_packed_file_replaces_the_plain_one_whatever_the_mtimes(model_dir: Path, tmp_path: Path) -> None:
    """A checkout (or a copy that keeps mtimes, `cp -p`) brings other weights' packed file, older than the plain
    file restored before: the plain file is restored from the new content all the same."""
    from safetensors.torch import load_file, save_file

    work, other = tmp_path / "model", tmp_path / "other"
    shutil.copytree(model_dir, work)
    shutil.copytree(model_dir, other)
    (packed,) = pack_weights(work)
    original = (work / WEIGHTS).read_bytes()
    tensors = load_file(other / WEIGHTS)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, other / WEIGHTS, metadata={"format": "pt"})
    (other_packed,) = pack_weights(other)
    shutil.copyfile(other_packed, packed)
    os.utime(packed, (1, 1))
    unpack_weights(work)
    assert (work / WEIGHTS).read_bytes() == (other / WEIGHTS).read_bytes() != original
    (work / WEIGHTS).write_bytes(b"changed by hand after it was restored: left alone")
    unpack_weights(work)
    assert (work / WEIGHTS).read_bytes() == b"changed by hand after it was restored: left alone"


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_corrupt_packed_file_is_refused(model_dir: Path, tmp_path: Path, where: str) -> None:
    """The first data byte is a mantissa byte stored as it is (only the checksum can notice); the last one is in
    the zlib-compressed sign/exponent plane."""
    import json
    import struct

    (packed,) = pack_weights(model_dir)
    data = bytearray(packed.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    first = 8 + header_len + json.loads(data[8:8 + header_len])["prefix"]
    data[first if where == "first" else -1] ^= 0xFF
    broken = tmp_path / packed.name
    broken.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        unpack_file(broken)
    assert not (tmp_path / WEIGHTS).exists()


def test_tensors_of_mixed_widths_are_not_packed(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(4, dtype=torch.float32), "b": torch.zeros(4, dtype=torch.bfloat16)},
              str(tmp_path / WEIGHTS))
    with pytest.raises(ValueError, match="dtypes"):
        pack_weights(tmp_path)


@pytest.mark.parametrize("content", [b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n", b"\x01"])
def test_a_file_that_is_not_packed_is_refused_by_name(tmp_path: Path, content: bytes) -> None:
    """A Git LFS pointer or a truncated copy where the packed file should be: an error naming it."""
    (tmp_path / ("model.safetensors" + SUFFIX)).write_bytes(content)
    with pytest.raises(ValueError, match="not an r2r-byte-planes-1 file"):
        unpack_weights(tmp_path)
