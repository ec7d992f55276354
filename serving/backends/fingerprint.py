"""Content fingerprints of model and tokenizer directories, recorded in every artifact made from them."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")  # what HF model directories hold their weights in
CACHE_NAME = ".r2r-fingerprint.json"  # beside the weights: the fingerprint and the file stats it was computed for
_CHUNK = 1 << 24


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    """Every byte of the file, after its name and size."""
    h.update(f"{path.name}:{path.stat().st_size}".encode())
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def _stats(paths: list[Path]) -> list[list]:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _fingerprint_files(root: Path, config: str) -> str:
    """sha256 (16 hex chars) over the whole config file and every weight file of a directory.

    Hashing every byte of a large model takes a while (about a second a GB), so the result is cached beside the
    weights, keyed by each file's name, size and modification time; a directory that cannot be written is
    hashed again each time."""
    paths = sorted(p for p in {root / config, *(q for pattern in WEIGHT_PATTERNS for q in root.glob(pattern))}
                   if p.is_file())
    cache = root / CACHE_NAME
    stats = _stats(paths)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stats:
            return cached["fingerprint"]
    except (OSError, ValueError, AttributeError):
        pass
    h = hashlib.sha256()
    for path in paths:
        _hash_file(h, path)
    fingerprint = h.hexdigest()[:16]
    tmp = cache.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "files": stats}))
        tmp.replace(cache)
    except OSError as exc:
        log.info("fingerprint of %s not cached (%s)", root, exc)
    return fingerprint


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
