"""What a byte-level handoff's new row costs the tokenizer as the text grows (issue 37): encoding the whole prefix
again, as rows were made before, against encoding the bytes after a cut a few tokens back
(`TokenBytes.encode_reusing`, how rows are made now).

Text: testbed math solutions with their wording freedom, one after another, cut to 1k, 4k and 16k tokens. Per
tokenizer (the testbed's, and SmolLM2's 49k and Gemma 3's 262k vocabularies when fetched: `r2r models fetch
smol-gemma`), the median ms per new row over ends up to one token length before the text's end, the row planned
from an encoding of the text up to a few bytes before it (as a handoff does). The two ways are interleaved, and
their tokens are checked equal.

    .venv/bin/python -m r2r.evals.bench.experiments.row_encoding > bench/experiments/row_encoding.json
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from r2r.serving.byte_level.token_bytes import TokenBytes
from r2r.testbed.math_tasks import generate_math

LENGTHS = (1024, 4096, 16384)
ENDS = 9  # row ends timed per length


def reasoning_text(vocab: TokenBytes, n_tokens: int) -> bytes:
    """Testbed math solutions joined by blank lines, cut to `n_tokens` tokens of this vocabulary."""
    rng, parts, size = random.Random(0), [], 0
    while size < 8 * n_tokens:  # more bytes than n_tokens tokens of any of these vocabularies
        parts.append(generate_math(rng).solution.encode())
        size += len(parts[-1]) + 2
    return vocab.decode(vocab.encode(b"\n\n".join(parts))[:n_tokens])


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def time_rows(vocab: TokenBytes, text: bytes) -> dict:
    """Median ms per new row both ways, at ends up to one token length before the text's end."""
    rng = random.Random(1)
    whole, reused = [], []
    for _ in range(ENDS):
        end = len(text) - rng.randrange(0, vocab.max_len)
        known_end = end - rng.randrange(1, 8)
        known = vocab.encode(text[:known_end])
        ids, _ = vocab.encode_reusing(text, end, known, known_end)
        assert ids == vocab.encode(text[:end]), "the two ways give different tokens"
        whole.append(_ms(lambda: vocab.encode(text[:end])))
        reused.append(_ms(lambda: vocab.encode_reusing(text, end, known, known_end)))
    return {"whole_prefix_ms": round(statistics.median(whole), 3),
            "reusing_ms": round(statistics.median(reused), 3)}


def tokenizers() -> dict[str, Path]:
    from r2r.serving.pair import MODELS_DIR
    from r2r.serving.real_models import CACHE_DIR, GEMMA3_DIR, SMOLLM2_DIR

    found = {"testbed": MODELS_DIR / "testbed" / "tokenizer"}
    for name, sub in (("smollm2", SMOLLM2_DIR), ("gemma3", GEMMA3_DIR)):
        if (CACHE_DIR / sub / "tokenizer.json").exists():
            found[name] = CACHE_DIR / sub
    return found


def main() -> dict:
    from transformers import AutoTokenizer

    out: dict = {}
    for name, path in tokenizers().items():
        vocab = TokenBytes.from_tokenizer(AutoTokenizer.from_pretrained(path))
        out[name] = {"vocab_size": len(vocab.table), "max_token_bytes": vocab.max_len,
                     "by_tokens": {str(n): time_rows(vocab, reasoning_text(vocab, n)) for n in LENGTHS}}
    return {"tokenizers": out, "meta": {"ends_per_length": ENDS, "lengths": list(LENGTHS)}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
