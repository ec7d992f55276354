"""Model fingerprints: every byte of every weight file counts, and the result is cached beside the weights."""
from __future__ import annotations

import json
from pathlib import Path

from r2r.serving.backends.fingerprint import CACHE_NAME, model_fingerprint


def _model_dir(root: Path, weights: dict[str, bytes]) -> Path:
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama"}')
    for name, data in weights.items():
        (root / name).write_bytes(data)
    return root


def test_a_change_anywhere_in_the_weights_changes_the_fingerprint(tmp_path: Path) -> None:
    size = 5 << 20  # past the first and last MiB an earlier sampling scheme hashed
    base = bytes(range(256)) * (size // 256)
    seen = {model_fingerprint(_model_dir(tmp_path / "base", {"model.safetensors": base}))}
    for i, offset in enumerate((0, size // 2, size - 1)):
        changed = bytearray(base)
        changed[offset] ^= 1
        seen.add(model_fingerprint(_model_dir(tmp_path / f"flip{i}", {"model.safetensors": bytes(changed)})))
    assert len(seen) == 4, "a flipped byte at the start, middle or end must change the fingerprint"


def test_bin_weights_count(tmp_path: Path) -> None:
    a = model_fingerprint(_model_dir(tmp_path / "a", {"pytorch_model.bin": b"\x00" * 1000}))
    b = model_fingerprint(_model_dir(tmp_path / "b", {"pytorch_model.bin": b"\x00" * 999 + b"\x01"}))
    assert a != b, "*.bin weights must be part of the fingerprint"


def test_cached_beside_the_weights_and_recomputed_when_a_file_changes(tmp_path: Path) -> None:
    root = _model_dir(tmp_path / "m", {"model.safetensors": b"abc" * 1000})
    first = model_fingerprint(root)
    cache = json.loads((root / CACHE_NAME).read_text())
    assert cache["fingerprint"] == first and [f[0] for f in cache["files"]] == ["config.json", "model.safetensors"]
    (root / "model.safetensors").write_bytes(b"abd" * 1000)
    assert model_fingerprint(root) != first, "a rewritten weight file must not be served from the cache"
    (root / CACHE_NAME).write_text("not json")
    assert model_fingerprint(root) == model_fingerprint(root), "a corrupt cache is recomputed, not trusted"


def test_testbed_slm_fingerprint_is_the_one_its_routers_record() -> None:
    from r2r.serving.backends.shared_body import materialize_weights

    repo = Path(__file__).resolve().parents[1]
    materialize_weights(repo / "models/testbed/slm")
    recorded = json.loads((repo / "models/testbed/router/router.json").read_text())["slm_fingerprint"]
    assert model_fingerprint(repo / "models/testbed/slm") == recorded
