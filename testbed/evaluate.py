"""Held-out accuracy and decode latency of a testbed model, written into its model card."""
from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from r2r.testbed.problem import Problem, grade
from r2r.testbed.splits import FAMILIES, heldout
from r2r.router.policies import RoutingPolicy
from r2r.serving.backends.base import LAST_ROW, Backend
from r2r.serving.backends.packed_weights import SUFFIX as PACKED
from r2r.serving.backends.shared_body import BODY, OWN, BodyRef
from r2r.serving.decoding.generation import Generation, RoutingMode
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import run_to_completion
from r2r.serving.decoding import decode
from r2r.serving.decoding.stopping import StopRule

MAX_NEW_TOKENS = 200

LLM_X_CARD = (
    "The testbed LLM with another tokenizer (`models/testbed/tokenizer-x`: SentencePiece-style BPE, U+2581 spaces, "
    "byte fallback, 1024 pieces learned separately) for cross-tokenizer routing. It shares the LLM's 36 layers' MLP "
    "weights, frozen and read from `models/testbed/llm`; its embeddings (tied to the output head), attention "
    "weights and RMSNorm weights are its own: each new embedding started as the mean of the LLM embeddings of its "
    "text (vocabulary transplant), the rest as the LLM's, then these alone were trained on the testbed families "
    "(embeddings and norms alone reached only 1% math, 41% code). Its SLM partner shares nothing with its "
    "tokenizer: routing between them goes through exact byte-level handoff.")
BUILD_LLM = ("r2r testbed train --size llm-base --out runs/testbed/llm-base && r2r testbed train --size llm "
             "--init-from runs/testbed/llm-base --seed 1 --warmup 20 --ckpt-every 20")
LLM_X_REPRODUCE = ("Reproduce: `r2r testbed data` (writes tokenizer-x too), build the LLM (see its card), then "
                   "`r2r testbed train --size llm --init-from models/testbed/llm --tokenizer-dir "
                   "models/testbed/tokenizer-x --train-only embed_tokens,norm,self_attn --out models/testbed/llm-x "
                   "--steps 300 --lr 5e-4 --warmup 50 --ckpt-every 25 --ckpt-dir runs/testbed/ckpt-llm-x`, the same "
                   "with `--steps 500` (it resumes at step 300, on the 500-step schedule), `r2r testbed eval --models "
                   "llm-x`.")
LLM_CARD = (
    "The large model of the embedded default pair, a llama causal LM trained on the r2r testbed task families "
    "(math, code). Trained in two stages: a 6-layer model (`--size llm-base`) from scratch, then grown 6x in depth "
    "(`testbed/grow.py`: each trained layer followed by five new ones whose attention and MLP output projections "
    "start at zero, so the grown model starts as the same function) and trained on. Deep so that its batch-1 "
    "decode step costs many SLM steps, as a large model's does on a GPU: on this CPU a step costs about a fixed "
    "amount per layer. Stored in bfloat16 to halve its weights; loaded as float32, the accuracy below is the "
    "stored weights'.")


@dataclass(frozen=True)
class EvalConfig:
    model_dir: Path
    n_problems: int = 500
    batch_size: int = 50
    split: str = "test"

    def __post_init__(self) -> None:
        if self.n_problems < 1:
            raise ValueError(f"evaluation needs at least one problem per family, got {self.n_problems}")


def solve_routed(slm: Backend, llm: Backend, policy: RoutingPolicy, tokenizer, problems: list[Problem],
                 batch_size: int, mode: RoutingMode = RoutingMode.SEQUENTIAL) -> list[Generation]:
    """Greedy routed completions of testbed problems (chat-formatted prompts), in either routing mode (the
    same completions: speculative routing is lossless)."""
    from r2r.testbed.tokenizer import chat_text

    rule = StopRule(frozenset({tokenizer.eos_token_id}), tokenizer.decode, min(slm.max_length, llm.max_length))
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS)
    out: list[Generation] = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [tokenizer(chat_text(p.prompt))["input_ids"] for p in chunk]
        keys = list(range(start, start + len(chunk)))
        out += run_to_completion(slm, llm, policy, prompts, [params] * len(chunk), rule, mode, keys)
    return out


def solve(backend: Backend, tokenizer, problems: list[Problem], batch_size: int) -> list[str]:
    """Greedy completions of one model alone, in batches."""
    from r2r.testbed.tokenizer import chat_text

    rule = StopRule(frozenset({tokenizer.eos_token_id}), tokenizer.decode, backend.max_length)
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS)
    texts: list[str] = []
    for start in range(0, len(problems), batch_size):
        prompts = [tokenizer(chat_text(p.prompt))["input_ids"] for p in problems[start : start + batch_size]]
        texts += [g.text for g in decode(backend, prompts, [params] * len(prompts), rule)]
    return texts


def decode_latency_ms(backend: Backend, prompt: list[int], n_tokens: int = 64, repeats: int = 3) -> float:
    """Median per-token latency of batch-1 greedy decoding (one extend per token, KV reused)."""
    per_run = []
    for _ in range(repeats):
        seq, out = backend.open([prompt], rows_at=[LAST_ROW])[0]
        tok = int(out.logits[-1].argmax())
        start = time.perf_counter()
        for _ in range(n_tokens):
            tok = int(backend.extend([seq], [[tok]])[0].logits[-1].argmax())
        per_run.append((time.perf_counter() - start) / n_tokens * 1000)
        backend.close(seq)
    return statistics.median(per_run)


def evaluate_model(cfg: EvalConfig) -> dict:
    from transformers import AutoTokenizer

    from r2r.testbed.tokenizer import chat_text
    from r2r.serving.backends.hf import HFBackend

    backend = HFBackend(cfg.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir)
    result: dict = {"model_dir": str(cfg.model_dir), "split": cfg.split, "n_problems": cfg.n_problems,
                    "accuracy": {}}
    for family in FAMILIES:
        problems = heldout(family, cfg.split, cfg.n_problems)
        texts = solve(backend, tokenizer, problems, cfg.batch_size)
        result["accuracy"][family] = sum(grade(p, t) for p, t in zip(problems, texts)) / len(problems)
    probe = tokenizer(chat_text(heldout("math", cfg.split, 1)[0].prompt))["input_ids"]
    result["ms_per_token_batch1"] = round(decode_latency_ms(backend, probe), 3)
    return result


def _training_line(training: dict) -> str:
    """Steps and mixture of each training stage, then total tokens and time."""
    stages = training.get("stages") or [{**training["config"], **training}]

    def mix(s: dict) -> str:
        weights = s.get("family_weights")
        return "uniform mix" if not weights else ", ".join(f"{f}={w:g}" for f, w in zip(FAMILIES, weights))

    def only(s: dict) -> str:
        return f", training only {' and '.join(s['train_only'])}" if s.get("train_only") else ""

    steps = " then ".join(f"{s['steps']} steps x {s['batch_size']} problems ({mix(s)}, peak lr {s['lr']:g}{only(s)})"
                          for s in stages)
    tokens = training.get("total_train_tokens", training["train_tokens"])
    seconds = training.get("total_train_seconds", training["train_seconds"])
    return f"{steps}; {tokens:,} tokens, {seconds / 60:.1f} min on 2 CPU cores"


def _weights_row(model_dir: Path, config: dict) -> list[str]:
    """How the weights are committed: packed losslessly when a packed file is there, or its own tensors only."""
    if (model_dir / BODY).exists():
        ref = BodyRef.read(model_dir)
        mib = (model_dir / OWN).stat().st_size / 2**20
        kinds = dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name in ref.own)  # one row per layer-wise kind
        return [f"| weights | its own {len(ref.own)} tensors ({', '.join(f'`{k}`' for k in kinds)}) in `{OWN}` "
                f"({mib:.1f} MiB); every other tensor is `{ref.body}`'s (fingerprint {ref.fingerprint}, frozen in "
                "training), read from there: `serving/backends/shared_body.py` assembles the whole on first load |"]
    packed = sorted(model_dir.glob(f"*.safetensors{PACKED}"))
    if not packed:
        return []
    mib = sum(p.stat().st_size for p in packed) / 2**20
    return [f"| weights | {config.get('dtype', 'float32')} safetensors, committed as `{packed[0].name}` ({mib:.1f} "
            "MiB, lossless byte-plane packing: `serving/backends/packed_weights.py`), unpacked to the plain file "
            "on first load |"]


def write_model_card(model_dir: Path, role: str, evaluation: dict, other: dict | None,
                     description: str | None = None, reproduce: str | None = None) -> None:
    """README.md model card: config, parameter count, training tokens/time, accuracy, latency."""
    training = json.loads((model_dir / "training.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "eval.json").write_text(json.dumps(evaluation, indent=2))
    acc = evaluation["accuracy"]
    lines = [
        f"# r2r testbed {role.upper()}",
        "",
        description or f"A {config['model_type']} causal LM trained from scratch on the r2r testbed task families "
        f"({', '.join(FAMILIES)}), the {'small' if role == 'slm' else 'large'} model of the embedded default pair.",
        "",
        "| | |", "|---|---|",
        f"| architecture | {config['architectures'][0]}: hidden {config['hidden_size']}, "
        f"{config['num_hidden_layers']} layers, {config['num_attention_heads']} heads "
        f"({config['num_key_value_heads']} KV), FFN {config['intermediate_size']}, vocab {config['vocab_size']} |",
        f"| parameters | {training['parameters']:,} |",
        *_weights_row(model_dir, config),
        f"| training | {_training_line(training)} |",
        f"| held-out accuracy ({evaluation['n_problems']} {evaluation['split']} problems, greedy) | "
        + ", ".join(f"{f}: {acc[f]:.1%}" for f in FAMILIES) + " |",
        f"| decode latency, batch 1 | {evaluation['ms_per_token_batch1']:.2f} ms/token |",
    ]
    if other is not None:
        lines.append("| vs the other model | accuracy " + ", ".join(
            f"{f}: {acc[f] - other['accuracy'][f]:+.1%}" for f in FAMILIES)
            + f"; latency ratio {evaluation['ms_per_token_batch1'] / other['ms_per_token_batch1']:.2f}x |")
    lines += ["", reproduce or f"Reproduce: `r2r testbed data && r2r testbed train --size slm && {BUILD_LLM} && "
              "r2r testbed eval`.", ""]
    (model_dir / "README.md").write_text("\n".join(lines))


COMPARED_WITH = {"slm": "llm", "llm": "slm", "llm-x": "slm"}  # each card's "vs the other model" row
_CARD_TEXTS = {"slm": (None, None), "llm": (LLM_CARD, None), "llm-x": (LLM_X_CARD, LLM_X_REPRODUCE)}


def models_to_evaluate(cards: list[str]) -> list[str]:
    """The testbed models whose evaluation the named cards need: their own and their comparison model's."""
    return [m for m in COMPARED_WITH if m in cards or any(COMPARED_WITH[c] == m for c in cards)]


def write_cards(testbed_dir: Path, cards: list[str], results: dict[str, dict]) -> None:
    for card in cards:
        write_model_card(testbed_dir / card, card, results[card], results[COMPARED_WITH[card]], *_CARD_TEXTS[card])
