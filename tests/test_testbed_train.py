"""Testbed training: a continued model's record counts every stage of its training."""
from __future__ import annotations

import json
from pathlib import Path

from r2r.testbed.train import LMTrainConfig, train

TOKENIZER = Path(__file__).resolve().parents[1] / "models" / "testbed" / "tokenizer"


def test_continued_training_records_all_stages(tmp_path: Path) -> None:
    first = train(LMTrainConfig(size="slm", tokenizer_dir=TOKENIZER, out_dir=tmp_path / "a", ckpt_dir=tmp_path / "ca",
                              steps=2, batch_size=2, threads=1))
    second = train(LMTrainConfig(size="slm", tokenizer_dir=TOKENIZER, out_dir=tmp_path / "b", ckpt_dir=tmp_path / "cb",
                               steps=3, batch_size=2, threads=1, init_from=first, family_weights=(1.0, 3.0)))
    a, b = (json.loads((d / "training.json").read_text()) for d in (first, second))
    assert [s["steps"] for s in a["stages"]] == [2] and a["total_train_tokens"] == a["train_tokens"]
    assert [s["steps"] for s in b["stages"]] == [2, 3]
    assert b["stages"][1]["family_weights"] == [1.0, 3.0] and b["stages"][1]["init_from"] == str(first)
    assert b["total_train_tokens"] == a["train_tokens"] + b["train_tokens"]


def test_a_card_is_evaluated_with_its_comparison_model() -> None:
    """`r2r testbed eval --models` evaluates the named models and what their cards compare them with, nothing
    more (the LLM's evaluation is the slow one)."""
    from r2r.testbed.evaluate import models_to_evaluate

    assert models_to_evaluate(["llm-x"]) == ["slm", "llm-x"]
    assert models_to_evaluate(["slm"]) == ["slm", "llm"]
    assert models_to_evaluate(["llm-x", "llm"]) == ["slm", "llm", "llm-x"]
