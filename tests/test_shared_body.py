"""A model trained with its body frozen stores only what trained and loads as the whole model it was."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from r2r.serving.backends.fingerprint import model_fingerprint
from r2r.serving.backends.hf import HFBackend
from r2r.serving.backends.shared_body import BODY, OWN, WEIGHTS, materialize_weights
from r2r.testbed.train import LMTrainConfig, train

TESTBED = Path(__file__).resolve().parents[1] / "models" / "testbed"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny body (the SLM's shape, two steps from scratch) and a model with another tokenizer trained from
    it with only its token embeddings learning."""
    root = tmp_path_factory.mktemp("shared")
    body = train(LMTrainConfig(size="slm", tokenizer_dir=TESTBED / "tokenizer", out_dir=root / "body",
                               ckpt_dir=root / "cb", steps=2, batch_size=2, threads=1))
    derived = train(LMTrainConfig(size="slm", tokenizer_dir=TESTBED / "tokenizer-x", out_dir=root / "x",
                                  ckpt_dir=root / "cx", steps=2, batch_size=2, threads=1, lr=1e-2, init_from=body,
                                  train_only=("embed_tokens",)))
    return {"body": body, "x": derived}


def test_only_the_trained_tensors_are_stored(trained: dict[str, Path]) -> None:
    x, body = trained["x"], trained["body"]
    ref = json.loads((x / BODY).read_text())
    assert ref["own"] == ["model.embed_tokens.weight"] and (x / ref["body"]).resolve() == body.resolve()
    assert ref["fingerprint"] == model_fingerprint(body)
    assert sorted(load_file(x / OWN)) == ["model.embed_tokens.weight"]
    assert not list(x.glob("*.packed")), "a shared-body model commits no packed copy of the whole"
    full, base = load_file(x / WEIGHTS), load_file(body / WEIGHTS)
    assert full["model.embed_tokens.weight"].shape[0] != base["model.embed_tokens.weight"].shape[0]
    assert all(full[k].equal(t) for k, t in base.items() if "embed_tokens" not in k), "the body stayed frozen"


def test_a_checkout_assembles_the_model_it_was(trained: dict[str, Path], tmp_path: Path) -> None:
    """What is committed (no model.safetensors) loads with the trained model's fingerprint and logits."""
    before = HFBackend(trained["x"])
    ids = [[5, 17, 40, 99]]
    expected = before.open(ids)[0][1].logits
    work = tmp_path / "checkout"
    shutil.copytree(trained["x"].parent, work, ignore=shutil.ignore_patterns(WEIGHTS, "cb", "cx"))
    after = HFBackend(work / "x")
    assert (work / "x" / WEIGHTS).read_bytes() == (trained["x"] / WEIGHTS).read_bytes()
    assert after.fingerprint == before.fingerprint
    assert torch.equal(after.open(ids)[0][1].logits, expected)


def test_a_changed_body_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    shutil.copytree(trained["x"].parent, work, ignore=shutil.ignore_patterns("cb", "cx"))
    tensors = load_file(work / "body" / WEIGHTS)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file(tensors, work / "body" / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="has changed since"):
        materialize_weights(work / "x")


def test_a_stale_assembled_copy_is_rebuilt(trained: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    shutil.copytree(trained["x"].parent, work, ignore=shutil.ignore_patterns("cb", "cx"))
    own = load_file(work / "x" / OWN)
    own["model.embed_tokens.weight"] = own["model.embed_tokens.weight"] * 2
    save_file(own, work / "x" / OWN, metadata={"format": "pt"})
    os.utime(work / "x" / OWN, (1, 1))  # older than the assembled copy, as a copy that keeps mtimes leaves it
    materialize_weights(work / "x")
    assert load_file(work / "x" / WEIGHTS)["model.embed_tokens.weight"].equal(own["model.embed_tokens.weight"])


def test_training_only_some_parameters_needs_a_body(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--init-from"):
        LMTrainConfig(size="slm", tokenizer_dir=TESTBED / "tokenizer", out_dir=tmp_path, ckpt_dir=tmp_path,
                      train_only=("embed_tokens",))


def test_a_current_assembled_copy_is_kept(trained: dict[str, Path]) -> None:
    before = (trained["x"] / WEIGHTS).stat().st_mtime_ns
    materialize_weights(trained["x"])
    assert (trained["x"] / WEIGHTS).stat().st_mtime_ns == before


@pytest.mark.parametrize("fragments, out, message", [(("embed_tokens", " "), "x", "must not be empty"),
                                                     (("embed_tokens",), "body", "another directory")])
def test_bad_train_only_requests_are_refused(tmp_path: Path, fragments: tuple[str, ...], out: str,
                                             message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LMTrainConfig(size="slm", tokenizer_dir=TESTBED / "tokenizer", out_dir=tmp_path / out, ckpt_dir=tmp_path,
                      init_from=tmp_path / "body", train_only=fragments)


def test_a_body_with_other_tensors_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    """A model holding a tensor its body lacks (or lacking one the body has) is not that body's."""
    from r2r.serving.backends.shared_body import split_body

    work = tmp_path / "checkout"
    shutil.copytree(trained["x"].parent, work, ignore=shutil.ignore_patterns("cb", "cx"))
    tensors = load_file(work / "x" / WEIGHTS)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, work / "x" / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="hold different tensors"):
        split_body(work / "x", work / "body", ["model.embed_tokens.weight"])


def test_full_training_replaces_a_shared_body_model(trained: dict[str, Path], tmp_path: Path) -> None:
    """Training a whole model into a shared-body model's directory leaves no body.json behind to reassemble it."""
    work = tmp_path / "checkout"
    shutil.copytree(trained["x"].parent, work, ignore=shutil.ignore_patterns("cb", "cx"))
    train(LMTrainConfig(size="slm", tokenizer_dir=TESTBED / "tokenizer-x", out_dir=work / "x", ckpt_dir=tmp_path / "c",
                        steps=1, batch_size=2, threads=1))
    assert not (work / "x" / BODY).exists() and not (work / "x" / OWN).exists()
    assert list((work / "x").glob("*.packed"))


def test_a_body_of_another_depth_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    """A model that reads its frozen layers from the body needs the body's depth (no growth with --train-only)."""
    with pytest.raises(ValueError, match="this model's depth"):
        train(LMTrainConfig(size="llm-base", tokenizer_dir=TESTBED / "tokenizer", out_dir=tmp_path / "deeper",
                            ckpt_dir=tmp_path / "c", steps=1, batch_size=2, threads=1, init_from=trained["body"],
                            train_only=("embed_tokens",)))
