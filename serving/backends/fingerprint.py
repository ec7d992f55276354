"""Content fingerprints of model and tokenizer directories, recorded in every artifact made from them."""
from __future__ import annotations

import hashlib
from pathlib import Path

_SAMPLE = 1 << 20  # hash the first and last MiB of large weight files: cheap and still content-sensitive


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        if size <= 2 * _SAMPLE:
            h.update(f.read())
        else:
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))


def _fingerprint_files(root: Path, config: str) -> str:
    """sha256 (16 hex chars) over the config file and the weight files of a directory."""
    h = hashlib.sha256()
    for path in sorted([root / config, *root.glob("*.safetensors")]):
        if path.exists():
            _hash_file(h, path)
    return h.hexdigest()[:16]


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 (16 hex chars) over config.json and the weight files."""
    return _fingerprint_files(Path(model_dir), "config.json")


def router_fingerprint(router_dir: str | Path) -> str:
    """sha256 (16 hex chars) over a router checkpoint: router.json (thresholds) and its weights."""
    return _fingerprint_files(Path(router_dir), "router.json")


def router_model_fingerprint(router_dir: str | Path) -> str:
    """sha256 (16 hex chars) over a router checkpoint less its thresholds: the network, its config and its
    share curve, which is what routing at an explicit LLM-share budget depends on. Writing a new default
    threshold into the router (`r2r bench operating-point`) keeps it."""
    import json

    root = Path(router_dir)
    meta = {k: v for k, v in json.loads((root / "router.json").read_text()).items()
            if k not in ("threshold", "thresholds")}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for path in sorted(root.glob("*.safetensors")):
        _hash_file(h, path)
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (16 hex chars) of the vocabulary and special tokens: equal iff ids mean the same strings."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256(repr(vocab).encode())
    h.update(repr(sorted(tokenizer.all_special_tokens)).encode())
    return h.hexdigest()[:16]
