"""Train a testbed model (Llama architecture) from scratch on the testbed families.

Loss is on the assistant's answer only. Checkpoints (model, optimizer, step) are written
every `ckpt_every` steps and training resumes from the latest one, so a killed run loses
at most that many steps. Batches are a function of (seed, step): a resumed run sees the
same data it would have seen.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from r2r.serving.backends.derived_files import source_stamp
from r2r.serving.backends.packed_weights import SUFFIX as PACKED, pack_weights
from r2r.serving.backends.shared_body import BODY, OWN, WEIGHTS, materialize_weights, split_body
from r2r.serving.backends.threads import torch_threads

from r2r.testbed.splits import FAMILIES, heldout_prompts, sample_train
from r2r.testbed.tokenizer import chat_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    stored_dtype: str = "float32"  # bfloat16 halves a large model's committed weights; it is loaded as float32


SHAPES: dict[str, ModelShape] = {
    "slm": ModelShape(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=384),
    # trained from scratch; the LLM grows from it (and llm-x is transplanted from it)
    "llm-base": ModelShape(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=768),
    # the committed LLM: llm-base grown 6x in depth (testbed/grow.py), so that its decode step costs many SLM steps
    "llm": ModelShape(hidden_size=256, num_layers=36, num_heads=8, num_kv_heads=4, intermediate_size=768,
                      stored_dtype="bfloat16"),
}


DEFAULT_STEPS_LR: dict[str, tuple[int, float]] = {"slm": (800, 3e-3), "llm-base": (1500, 2e-3), "llm": (240, 3e-4)}


@dataclass(frozen=True)
class LMTrainConfig:
    size: str
    tokenizer_dir: Path
    out_dir: Path
    ckpt_dir: Path
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    ckpt_every: int = 100
    seed: int = 0
    threads: int = 2
    families: tuple[str, ...] = field(default_factory=lambda: tuple(FAMILIES))
    family_weights: tuple[float, ...] | None = None
    init_from: Path | None = None
    # parameters (by name fragment) that train; the rest stay init_from's and the saved model reads them from
    # there (serving.backends.shared_body). Empty: every parameter trains and the model is saved whole.
    train_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.train_only and self.init_from is None:
            raise ValueError("training only some parameters needs --init-from, the model the rest is read from")
        if self.train_only and Path(self.init_from).resolve() == Path(self.out_dir).resolve():
            raise ValueError("training only some parameters writes a model that reads the rest from --init-from: "
                             "--out must be another directory")
        if any(not fragment.strip() for fragment in self.train_only):
            raise ValueError(f"--train-only fragments must not be empty (an empty one names every parameter): "
                             f"{list(self.train_only)}")
        if self.size not in SHAPES:
            raise ValueError(f"unknown testbed model size {self.size!r}; known: {', '.join(SHAPES)}")
        if self.steps <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError(f"steps, batch_size and lr must be positive, got {self.steps}, {self.batch_size}, "
                             f"{self.lr}")
        if self.family_weights is not None and (
            len(self.family_weights) != len(self.families) or min(self.family_weights) < 0 or not any(self.family_weights)
        ):
            raise ValueError("family_weights needs one non-negative weight per family, not all zero")


def build_model(shape: ModelShape, vocab_size: int, eos_id: int, pad_id: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id, rope_theta=10000.0,
    )
    return LlamaForCausalLM(config)


def _lr_at(cfg: LMTrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_batch(tokenizer, cfg: LMTrainConfig, step: int, excluded: frozenset[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [batch, max_len]; labels are -100 on the prompt and on padding."""
    rng = random.Random(f"{cfg.seed}-{step}")
    weights = None if cfg.family_weights is None else list(cfg.family_weights)
    problems = sample_train(rng, cfg.batch_size, list(cfg.families), excluded, weights)
    rows: list[tuple[list[int], int]] = []
    for p in problems:
        prompt_len = len(tokenizer(chat_text(p.prompt))["input_ids"])
        rows.append((tokenizer(chat_text(p.prompt, p.solution))["input_ids"], prompt_len))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return input_ids, labels


def train(cfg: LMTrainConfig) -> Path:
    """Train (or resume) and save the final model + tokenizer to cfg.out_dir.

    With `init_from`, training starts from that model's weights instead of a random init
    (a resumed checkpoint still wins); see `transplant` for a source with another tokenizer.
    """
    # transformers initializes from torch's default generator: seeded inside a forked RNG state, on cfg.threads
    # threads, both restored afterwards
    with torch_threads(cfg.threads), torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return _train(cfg)


def _train(cfg: LMTrainConfig) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_dir)
    model = build_model(SHAPES[cfg.size], len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    prior = read_training_record(cfg.init_from)
    if cfg.init_from is not None:
        _init_from(model, tokenizer, cfg.init_from, grow=not cfg.train_only)
    trained = _freeze_all_but(model, cfg.train_only)
    opt = torch.optim.AdamW(trained.values(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    cfg.ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = cfg.ckpt_dir / "last.pt"
    start, tokens_seen, train_seconds = 0, 0, 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, tokens_seen, train_seconds = state["step"], state["tokens"], state["seconds"]
        log.info("resumed %s from step %d", cfg.size, start)
    excluded = heldout_prompts(list(cfg.families))
    model.train()
    t_last = time.perf_counter()
    for step in range(start, cfg.steps):
        input_ids, labels = make_batch(tokenizer, cfg, step, excluded)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        loss = model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.values(), 1.0)
        opt.step()
        tokens_seen += int((input_ids != tokenizer.pad_token_id).sum())
        if (step + 1) % 20 == 0:
            now = time.perf_counter()
            train_seconds += now - t_last
            t_last = now
            log.info("%s step %d/%d loss %.4f lr %.2e tokens %d (%.0f s)", cfg.size, step + 1, cfg.steps,
                     loss.item(), _lr_at(cfg, step), tokens_seen, train_seconds)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                        "tokens": tokens_seen, "seconds": train_seconds}, tmp)
            tmp.replace(ckpt_path)
    model.eval()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    # what an earlier model in out_dir was committed as goes first: were it left while the new weights are saved,
    # an interruption would leave it to replace them at the next load
    for stale in [*cfg.out_dir.glob(f"*.safetensors{PACKED}"), cfg.out_dir / BODY, cfg.out_dir / OWN,
                  source_stamp(cfg.out_dir / WEIGHTS)]:
        stale.unlink(missing_ok=True)
    model.to(getattr(torch, SHAPES[cfg.size].stored_dtype)).save_pretrained(cfg.out_dir)
    tokenizer.save_pretrained(cfg.out_dir)
    if cfg.train_only:  # what is committed: the trained tensors, the rest read from init_from
        split_body(cfg.out_dir, cfg.init_from, list(trained))
    else:  # the packed file is what gets committed; the plain one stays for loaders
        pack_weights(cfg.out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "shape": asdict(SHAPES[cfg.size]), "parameters": n_params, "train_tokens": tokens_seen,
            "train_seconds": round(train_seconds, 1)}
    (cfg.out_dir / "training.json").write_text(json.dumps(with_stages(info, prior), indent=2))
    return cfg.out_dir


def _freeze_all_but(model: torch.nn.Module, fragments: tuple[str, ...]) -> dict[str, torch.nn.Parameter]:
    """The parameters that train, by name: those whose name holds one of `fragments` (all when none given);
    the others are frozen."""
    trained = {}
    for name, param in model.named_parameters():
        param.requires_grad_(not fragments or any(f in name for f in fragments))
        if param.requires_grad:
            trained[name] = param
    if not trained:
        raise ValueError(f"no parameter name holds any of {list(fragments)}")
    return trained


def _init_from(model: torch.nn.Module, tokenizer, source_dir: Path, grow: bool = True) -> None:
    """Continued training or a tokenizer transplant from a model of this depth, depth growth from a shallower one
    (refused when not `grow`: a model that reads its frozen layers from the source needs the source's depth)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    materialize_weights(source_dir)
    if AutoConfig.from_pretrained(source_dir).num_hidden_layers < model.config.num_hidden_layers:
        if not grow:
            raise ValueError(f"training only some parameters needs {source_dir} to have this model's depth: "
                             "the frozen layers are read from it")
        from r2r.testbed.grow import grow_depth

        if AutoTokenizer.from_pretrained(source_dir).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"depth growth needs {source_dir} to have this model's tokenizer")
        grow_depth(model, AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32))
        return
    from r2r.testbed.transplant import init_from_pretrained

    init_from_pretrained(model, tokenizer, source_dir)


def read_training_record(model_dir: Path | None) -> dict | None:
    """The training.json of a model directory, if it has one (read before `out_dir` may overwrite it)."""
    path = None if model_dir is None else Path(model_dir) / "training.json"
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def with_stages(info: dict, prior: dict | None) -> dict:
    """`info` of this run plus the stages of the model it started from, so that a continued
    model's card counts all of its training: `stages` lists every run (oldest first) and
    `total_train_tokens` / `total_train_seconds` sum them."""
    def stage(record: dict) -> dict:
        keys = ("steps", "batch_size", "lr", "family_weights", "init_from", "tokenizer_dir", "train_only")
        return {**{k: record["config"].get(k) for k in keys}, "train_tokens": record["train_tokens"],
                "train_seconds": record["train_seconds"]}

    stages = ([] if prior is None else prior.get("stages", [stage(prior)])) + [stage(info)]
    return {**info, "stages": stages, "total_train_tokens": sum(s["train_tokens"] for s in stages),
            "total_train_seconds": round(sum(s["train_seconds"] for s in stages), 1)}


def parse_family_weights(spec: str | None) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """'math=1,code=3' -> (('math', 'code'), (1.0, 3.0)); None -> every family, uniform."""
    if spec is None:
        return tuple(FAMILIES), None
    pairs = [part.split("=", 1) for part in spec.split(",")]
    try:
        weights = {name.strip(): float(value) for name, value in pairs}
    except ValueError as exc:
        raise ValueError(f"--family-weights must look like math=1,code=3 (got {spec!r})") from exc
    unknown = set(weights) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown testbed families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    return tuple(weights), tuple(weights.values())
