"""Resumable storage: one HF dataset shard per (stage, chunk), written atomically, plus a manifest.

A shard directory appears only by an atomic rename of a finished temporary directory, so a
killed run leaves either a whole shard or none; re-running skips whole shards and redoes the
rest. The manifest pins the models, tokenizer and settings: resuming with different ones is
an error rather than a silently mixed dataset.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

MANIFEST = "manifest.json"


class ShardStore:
    def __init__(self, root: Path, identity: dict) -> None:
        """Open (or create) a store; `identity` (fingerprints and settings) must match an existing one."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        path = root / MANIFEST
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"corrupt manifest {path}: {exc}") from exc
            if manifest.get("identity") != identity:
                raise ValueError(f"{root} holds labels made with other models or settings "
                                 f"({manifest.get('identity')}); use another --out")
            self.manifest = manifest
        else:
            self.manifest = {"identity": identity, "counts": {}}
            self._write_manifest()
        for tmp in root.glob("*/*.tmp"):  # leftovers of a killed write
            shutil.rmtree(tmp, ignore_errors=True)

    def _path(self, stage: str, index: int) -> Path:
        return self.root / stage / f"shard-{index:05d}"

    def has(self, stage: str, index: int) -> bool:
        return self._path(stage, index).is_dir()

    def load(self, stage: str, index: int) -> Dataset:
        from datasets import Dataset, load_from_disk

        path = self._path(stage, index)
        return Dataset.from_dict({}) if (path / EMPTY).exists() else load_from_disk(str(path))

    def save(self, stage: str, index: int, ds: Dataset) -> None:
        final = self._path(stage, index)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if len(ds):
            ds.save_to_disk(str(tmp))
        else:  # arrow cannot read back a table with no rows and inferred null columns
            tmp.mkdir()
            (tmp / EMPTY).touch()
        tmp.rename(final)

    def shards(self, stage: str) -> list[Path]:
        return sorted(p for p in (self.root / stage).glob("shard-*") if not p.name.endswith(".tmp"))

    def set_counts(self, counts: dict) -> None:
        self.manifest["counts"] = counts
        self._write_manifest()

    def _write_manifest(self) -> None:
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2))
        tmp.replace(self.root / MANIFEST)


EMPTY = "EMPTY"  # marks a shard whose stage produced no rows


def read_manifest(root: Path) -> dict:
    """A label run's manifest: its config, fingerprints and `counts` (the summary `r2r label` prints)."""
    path = root / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no label manifest at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt manifest {path}: {exc}") from exc


def load_labels(root: Path, stage: str = "labels") -> tuple[Dataset, dict]:
    """All shards of a finished label run, concatenated, and its manifest."""
    from datasets import concatenate_datasets, load_from_disk

    manifest = read_manifest(root)
    shards = sorted(p for p in (root / stage).glob("shard-*") if not p.name.endswith(".tmp") and not (p / EMPTY).exists())
    if not shards:
        raise ValueError(f"{root} has no {stage} shards; run `r2r label` to completion first")
    parts = []
    for shard in shards:
        try:
            parts.append(load_from_disk(str(shard)))
        except Exception as exc:  # datasets raises FileNotFoundError/ArrowInvalid/etc. for a damaged shard
            raise ValueError(f"corrupt or empty shard {shard}: {exc}") from exc
    return concatenate_datasets(parts), manifest
