"""What a byte-level handoff costs the receiving model as the text grows, in time and in KV held (issue 37).

A model that receives bytes written by the other model (a different tokenizer) evaluates the covers of its text:
one row per split within a token length of the end. Rows used to be backend sequences, each new one a fork of
the longest (a copy of the whole sequence's KV); now a state holds one sequence and its other rows are branches
of one pass (`Backend.extend_with_branches`). This runs the same pushes on either code: this file imports only
what both have, so `before` is the same file run on an older tree.

Model: random weights of the testbed LLM-x's shape (36 layers, hidden 256, 4 key/value heads of 32, float32: 36 KB
of KV per position) and its tokenizer, the context window widened. Text: testbed math solutions; the first
`n` tokens are the state's context, then `PUSHES` pushes of 8-40 bytes each (what an SLM writes between two
handoffs). Per context length: median ms per push (its pass included), the rows live after it, the largest KV
pool and positions held over the pushes, and what a copy of the state (`fork_state`: the speculative round's
rollback point and verification state) costs in ms and in KV pool growth.

    .venv/bin/python evals/bench/experiments/handoff_kv.py --out runs/handoff_kv/after.json

bench/reproduce_handoff_kv.sh runs it on both trees and writes bench/experiments/handoff_kv.json.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

LENGTHS = (1024, 4096, 8192)
PUSHES = 12
CHUNK_BYTES = (8, 40)


def build(model_dir: Path, positions: int):
    """(a byte-level LM over a random-weight model of model_dir's shape, its backend)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from r2r.serving.backends.hf import HFBackend
    from r2r.serving.byte_level.probabilities import ByteLevelLM

    config = AutoConfig.from_pretrained(model_dir)
    config.max_position_embeddings = positions
    with torch.random.fork_rng():  # the same weights on both trees
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    backend = HFBackend.from_model(model, f"random {model_dir.name} shape", "random")
    return ByteLevelLM(backend, AutoTokenizer.from_pretrained(model_dir)), backend


def run_length(blm, backend, n_tokens: int) -> dict:
    from r2r.evals.bench.experiments.row_encoding import reasoning_text

    ids = blm.vocab.encode(reasoning_text(blm.vocab, n_tokens + 1024))
    context, rest = ids[:n_tokens], blm.vocab.decode(ids[n_tokens:])
    rng = random.Random(n_tokens)
    (state,) = blm.start([context])
    ms, rows, held, pool, at = [], [], 0, 0, 0
    for _ in range(PUSHES):
        size = rng.randint(*CHUNK_BYTES)
        chunk, at = rest[at : at + size], at + size
        start = time.perf_counter()
        blm.push([state], [chunk])
        ms.append((time.perf_counter() - start) * 1e3)
        rows.append(len(state.rows))
        held, pool = max(held, sum(backend.held_lengths)), max(pool, backend.kv_bytes)
    distribution = blm.distribution(state)
    before, start = backend.kv_bytes, time.perf_counter()
    copy = blm.fork_state(state)  # what the speculative round takes per flagged draft
    copy_ms, copy_bytes = (time.perf_counter() - start) * 1e3, backend.kv_bytes - before
    blm.close(copy)
    blm.close(state)
    return {"context_tokens": n_tokens, "ms_per_push": round(statistics.median(ms), 1),
            "rows_live": round(statistics.mean(rows), 2), "positions_held_max": held,
            "kv_pool_gib_max": round(pool / 2**30, 3), "copy_ms": round(copy_ms, 1),
            "copy_kv_gib": round(copy_bytes / 2**30, 3), "next_byte_argmax": int(torch.argmax(distribution))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/testbed/llm-x"),
                        help="a model directory whose shape and tokenizer are used (random weights)")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="context lengths in tokens")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lengths = [int(n) for n in args.lengths.split(",")]
    blm, backend = build(args.model, max(lengths) + 2048)
    result = {"meta": {"model": f"random weights of {args.model}'s shape and tokenizer, float32",
                       "pushes": PUSHES, "chunk_bytes": list(CHUNK_BYTES), "torch_threads": 1},
              "by_length": [run_length(blm, backend, n) for n in lengths]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
