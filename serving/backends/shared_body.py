"""Model directories that store only some of their tensors and read the rest from another model, their body.

Why: a model trained from another with most of its parameters frozen (`r2r testbed train --train-only`) differs
from it only in the tensors that trained, and the repository has room for one copy of a large model's weights, not
two. Such a model is stored as `model.safetensors.own` (the tensors that trained) and `body.json`, which names the
body's directory and the fingerprint of the weights it was trained on. The cross-tokenizer testbed LLM (`llm-x`,
the testbed LLM with another vocabulary) is one: its own embeddings, attention and norm weights, the LLM's MLP
weights. On first load `model.safetensors` is assembled from the two, so every loader reads a plain HF directory;
a body whose weights changed since is refused (the model was trained against the old ones).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from r2r.serving.backends.fingerprint import model_fingerprint
from r2r.serving.backends.derived_files import read_stamp, write_atomic, write_stamp
from r2r.serving.backends.packed_weights import unpack_weights

BODY = "body.json"
WEIGHTS = "model.safetensors"
OWN = WEIGHTS + ".own"


@dataclass(frozen=True)
class BodyRef:
    body: str  # the body's model directory, relative to this one
    fingerprint: str  # the body's `model_fingerprint` when this model was trained on it
    own: tuple[str, ...]  # the tensors this model stores itself

    @classmethod
    def read(cls, model_dir: Path) -> BodyRef:
        meta = json.loads((model_dir / BODY).read_text())
        return cls(meta["body"], meta["fingerprint"], tuple(meta["own"]))


def materialize_weights(model_dir: str | Path) -> None:
    """Make the `model.safetensors` a loader reads from what is committed: unpack packed weight files, and
    assemble a shared-body model's from its own tensors and its body's."""
    path = Path(model_dir)
    unpack_weights(path)
    if (path / BODY).exists():
        _assemble(path)


def _assemble(model_dir: Path) -> None:
    from safetensors.torch import load_file, save

    ref = BodyRef.read(model_dir)
    body = (model_dir / ref.body).resolve()
    if not (body / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} reads its layers from {body}, which holds no model")
    materialize_weights(body)
    if model_fingerprint(body) != ref.fingerprint:
        raise ValueError(f"{model_dir} was trained on the weights of {body} with fingerprint {ref.fingerprint}; "
                         f"that model has changed since ({model_fingerprint(body)}): train {model_dir.name} again")
    out, own = model_dir / WEIGHTS, model_dir / OWN
    source = _sources(model_dir, body)
    if out.exists() and read_stamp(out) == source:
        return
    tensors = load_file(body / WEIGHTS)
    mine = load_file(own)
    if sorted(mine) != sorted(ref.own):
        raise ValueError(f"{own} holds {sorted(mine)}, but {BODY} lists {sorted(ref.own)}")
    write_atomic(out, [save({**tensors, **mine}, metadata={"format": "pt"})])  # concurrent first loads
    write_stamp(out, source)


def _sources(model_dir: Path, body: Path) -> str:
    """What an assembled copy is made from: sha256 of the model's own tensors, its body.json and the body's
    weights (the body's own stamp when it was unpacked, which names their content)."""
    h = hashlib.sha256((model_dir / OWN).read_bytes() + (model_dir / BODY).read_bytes())
    h.update((read_stamp(body / WEIGHTS) or hashlib.sha256((body / WEIGHTS).read_bytes()).hexdigest()).encode())
    return h.hexdigest()


def split_body(model_dir: str | Path, body_dir: str | Path, own: list[str]) -> BodyRef:
    """Turn a saved full model directory into a shared-body one: its `own` tensors go to `model.safetensors.own`,
    every other tensor must equal the body's (the training kept them frozen), and `body.json` names the body.
    The full `model.safetensors` stays, as a loader's assembled copy."""
    from safetensors.torch import load_file, save_file

    path, body = Path(model_dir), Path(body_dir)
    materialize_weights(body)
    tensors, base = load_file(path / WEIGHTS), load_file(body / WEIGHTS)
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f"{path} has no tensors {missing}")
    if set(tensors) - set(own) != set(base) - set(own):
        raise ValueError(f"{path} and its body {body} hold different tensors: "
                         f"{sorted(set(tensors).symmetric_difference(base) - set(own))[:3]}")
    changed = sorted(k for k, t in tensors.items() if k not in own and not t.equal(base[k]))
    if changed:
        raise ValueError(f"{path} differs from its body {body} outside its own tensors: {changed[:3]}")
    save_file({k: tensors[k].contiguous() for k in own}, path / OWN, metadata={"format": "pt"})
    ref = BodyRef(os.path.relpath(body.resolve(), path.resolve()), model_fingerprint(body), tuple(own))
    (path / BODY).write_text(json.dumps(asdict(ref), indent=2) + "\n")
    write_stamp(path / WEIGHTS, _sources(path, body))  # the full file is current: no reassembly on first load
    return ref

