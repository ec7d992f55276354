"""Real models (slow): SmolLM2-135M through the backend contract and HumanEval end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from r2r.serving.backends.hf import HFBackend

from .test_hf_backend import check_backend


@pytest.mark.slow
def test_backend_on_smollm2(smollm2_dir) -> None:
    check_backend(HFBackend(smollm2_dir))


@pytest.mark.slow
def test_humaneval_with_smollm2_alone(smollm2_dir, tmp_path) -> None:
    """Loader, chat prompt and sandbox on a real model: SmolLM2 as both models, SLM-only policy."""
    out = tmp_path / "he"
    proc = subprocess.run([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", "eval",
                           "humaneval", "--slm", str(smollm2_dir), "--llm", str(smollm2_dir), "--policies", "slm",
                           "--limit", "16", "--max-tokens", "256", "--out", str(out)],
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    run = report["runs"]["slm@0.0"]
    assert run["n"] == 16 and run["complete"]
    assert all(p["tokens"] > 0 for p in run["problems"])


TEXTS = ["hello world", " leading space", "two  spaces\n\n  indent", "café ☕ 日本語 🎉", "x = 12345\n\tdef f():"]


@pytest.mark.slow
def test_token_bytes_round_trip_real_tokenizers(smollm2_dir, gemma3_dir) -> None:
    """GPT-2 byte-level BPE (SmolLM2) and SentencePiece with byte fallback and added whitespace tokens (Gemma 3)."""
    from transformers import AutoTokenizer

    from r2r.serving.byte_level.token_bytes import TokenBytes

    for model_dir in (smollm2_dir, gemma3_dir):
        tok = AutoTokenizer.from_pretrained(model_dir)
        vocab = TokenBytes.from_tokenizer(tok)
        for text in TEXTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert vocab.decode(ids) == text.encode(), (model_dir.name, text)
            assert vocab.encode(text.encode()) == ids
        assert vocab.encode("é".encode()[:1]) and vocab.decode(vocab.encode(b"a\xc3")) == b"a\xc3"


@pytest.mark.slow
def test_byte_level_chain_rule_on_smollm2(smollm2_dir) -> None:
    """log P(x + b) - log P(x) = log P(b | x) on a real 49k vocabulary, for prefixes ending mid-token."""
    from r2r.serving.byte_level.probabilities import ByteLevelLM

    blm = ByteLevelLM.from_pretrained(smollm2_dir)
    for x in [b"The capital of Fra", b"def fibonacci(n", b"Hello, wor"]:
        dist = blm.next_byte_logprobs(x)
        assert abs(float(dist.exp().sum()) - 1.0) < 1e-9
        b = int(dist[:256].argmax())
        assert abs(blm.logprob(x + bytes([b])) - blm.logprob(x) - float(dist[b])) < 1e-4
    assert blm.backend.open_sequences == 0


@pytest.mark.slow
def test_smol_gemma_routes_end_to_end_through_the_cli(smollm2_dir, gemma3_dir) -> None:
    proc = subprocess.run([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", "generate",
                           "--pair", "smol-gemma", "--policy", "random", "--llm-share", "0.4", "--max-tokens", "16",
                           "--json", "What is the capital of France?"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["text"] and {"slm", "llm"} <= set(out["sources"])


@pytest.mark.slow
def test_encoding_reused_from_a_known_prefix_on_real_tokenizers(smollm2_dir, gemma3_dir) -> None:
    """`encode_reusing` equals encoding everything on real vocabularies (SmolLM2's byte-level BPE, Gemma 3's
    SentencePiece with byte fallback and whitespace tokens): reasoning, code and math text with runs of spaces,
    tabs, newlines, accents, CJK, emoji and stray bytes, ends within a few tokens of the known prefix's."""
    import random

    from transformers import AutoTokenizer

    from r2r.serving.byte_level.token_bytes import TokenBytes

    from .test_byte_level import Alphabet, _random_text

    words = ["The", "answer", "is", "\\frac{1}{2}", "def", "fibonacci(n):", "return", "x**2", "Wait,", "let's",
             "check:", "12,345", "3.14159", "naïve", "日本語", "日本", "🙂", "->", "==", "(a+b)", "don't", "I'm",
             "1e-9", "café"]
    gaps = [" ", "  ", "    ", "\t", "\n", "\n\n", " \n", "\n    "]
    for model_dir in (smollm2_dir, gemma3_dir):
        vocab = TokenBytes.from_tokenizer(AutoTokenizer.from_pretrained(model_dir))
        rng = random.Random(model_dir.name)
        for _ in range(3):
            text = _random_text(rng, Alphabet(words, gaps, stray=True), 4000)
            for _ in range(60):
                known_end = rng.randrange(len(text) // 2, len(text))
                end = min(len(text), max(1, known_end + rng.randrange(-vocab.max_len, 2 * vocab.max_len)))
                ids, _ = vocab.encode_reusing(text, end, vocab.encode(text[:known_end]), known_end)
                assert ids == vocab.encode(text[:end]), (model_dir.name, text[max(0, end - 40):end])
