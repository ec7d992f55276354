"""`r2r bench gpu-costs`: what routing can buy on a device, read off random-weight models of real shapes.

Random-weight Qwen2 models shaped like DeepSeek-R1-Distill-Qwen-1.5B (the SLM) and -32B (the LLM), built on the
device in bf16 (no download, nothing written to disk), run through the project's transformers backend. For each
batch size: ms per decode step of each model, per catch-up pass of 8 and 16 tokens per row, and the router-side
cost (`evals.bench.step_costs.probe_costs`); from them the routed-vs-LLM-alone tokens/s bound at several LLM
shares (`routed_bounds`), beside the same run's measured sequential routing with the random policy at those
shares (random weights make acceptance meaningless, so speculative routing is not measured). `--quick` runs the
same code on tiny shapes (a CPU check that this cannot rot).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r2r.evals.bench.step_costs import ProbeConfig, _interleaved_ms, probe_costs, routed_bounds
from r2r.router.policies import RandomPolicy
from r2r.serving.backends.hf import HFBackend
from r2r.serving.decoding.generation import Source
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import generate_sequential
from r2r.serving.decoding import decode
from r2r.serving.decoding.stopping import StopRule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


R1_1_5B = Shape("DeepSeek-R1-Distill-Qwen-1.5B", 1536, 28, 12, 2, 8960, 151936)
R1_32B = Shape("DeepSeek-R1-Distill-Qwen-32B", 5120, 64, 40, 8, 27648, 152064)
TINY_SLM = Shape("tiny-slm", 64, 2, 4, 2, 128, 512)
TINY_LLM = Shape("tiny-llm", 128, 6, 4, 2, 256, 512)


@dataclass(frozen=True)
class GpuCostsConfig:
    device: str = "cuda"
    quick: bool = False
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    shares: tuple[float, ...] = (0.05, 0.10, 0.15)
    prompt_tokens: int = 128
    new_tokens: int = 64  # decoded per measured run (EOS ignored)
    repeats: int = 10

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not all(0 < s < 1 for s in self.shares):
            raise ValueError(f"batch sizes must be positive and shares in (0, 1): {self}")

    @property
    def shapes(self) -> tuple[Shape, Shape]:
        return (TINY_SLM, TINY_LLM) if self.quick else (R1_1_5B, R1_32B)


def build_backend(shape: Shape, device: str, dtype: torch.dtype) -> HFBackend:
    """A random-weight Qwen2 of `shape`, initialized directly on `device`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return HFBackend.from_model(model, f"random-{shape.name}", f"random-{shape.name}")


def step_ms(backend, prompts: list[list[int]], repeats: int) -> float:
    """Median ms of one decode step (one token per row) of `backend` for these prompts."""
    seqs = [s for s, _ in backend.open(prompts)]
    try:
        return _interleaved_ms({"step": lambda: backend.extend(seqs, [[p[-1]] for p in prompts])}, repeats)["step"]
    finally:
        for s in seqs:
            backend.close(s)


def sglang_step_costs(slm: HFBackend, cfg: GpuCostsConfig, model_dir: Path) -> dict:
    """The SLM-shaped model's decode step through the SGLang backend beside the transformers backend's: the
    adapter sends each step's whole token list through SGLang's tokenizer-manager and scheduler processes,
    which a per-step time shows. The random weights are saved to `model_dir` for SGLang to load."""
    from r2r.serving.backends.sglang import SGLangBackend, SGLangConfig

    slm.model.save_pretrained(model_dir)
    backend = SGLangBackend(SGLangConfig(str(model_dir), mem_fraction_static=0.3))
    g = torch.Generator().manual_seed(1)
    try:
        out = {}
        for batch in cfg.batch_sizes:
            prompts = torch.randint(0, slm.vocab_size, (batch, cfg.prompt_tokens), generator=g).tolist()
            out[f"batch_{batch}"] = {"sglang_step_ms": step_ms(backend, prompts, cfg.repeats),
                                     "hf_step_ms": step_ms(slm, prompts, cfg.repeats)}
        return out
    finally:
        backend.shutdown()


def _tokens_per_s(run) -> float:
    start = time.perf_counter()
    gens = run()
    return sum(len(g.token_ids) for g in gens) / (time.perf_counter() - start)


def gpu_costs(cfg: GpuCostsConfig, sglang_dir: Path | None = None) -> dict:
    """The costs JSON (module docstring); with `sglang_dir`, the SGLang backend's per-step time too."""
    dtype = torch.float32 if cfg.device == "cpu" else torch.bfloat16
    slm_shape, llm_shape = cfg.shapes
    t0 = time.perf_counter()
    slm, llm = build_backend(slm_shape, cfg.device, dtype), build_backend(llm_shape, cfg.device, dtype)
    result: dict = {"device": cfg.device, "dtype": str(dtype).removeprefix("torch."), "slm": slm_shape.__dict__,
                    "llm": llm_shape.__dict__, "slm_parameters": slm.n_parameters, "llm_parameters": llm.n_parameters,
                    "build_seconds": time.perf_counter() - t0, "new_tokens": cfg.new_tokens}
    g = torch.Generator().manual_seed(0)
    rule = StopRule(frozenset(), lambda ids: "", min(slm.max_length, llm.max_length))  # EOS ignored
    params = SamplingParams(max_tokens=cfg.new_tokens)
    for batch in cfg.batch_sizes:
        prompts = torch.randint(0, slm_shape.vocab, (batch, cfg.prompt_tokens), generator=g).tolist()
        entry: dict = {}
        for m in (8, 16):
            entry[f"costs_catchup_{m}"] = probe_costs(slm, llm, RandomPolicy(rate=0.1), prompts,
                                                      ProbeConfig(repeats=cfg.repeats, catchup_tokens=m))
        alone = _tokens_per_s(lambda: decode(llm, prompts, [params] * batch, rule, Source.LLM))
        entry["llm_alone_tokens_per_s"] = alone
        entry["shares"] = {}
        for share in cfg.shares:
            policy = RandomPolicy(rate=share, seed=1)
            routed = _tokens_per_s(lambda: generate_sequential(slm, llm, policy, prompts, [params] * batch, rule))
            bound = routed_bounds(entry["costs_catchup_8"], batch, share)
            entry["shares"][str(share)] = {"bound_sequential_over_llm_alone": bound["sequential_over_llm_alone"],
                                           "measured_sequential_tokens_per_s": routed,
                                           "measured_sequential_over_llm_alone": routed / alone}
        log.info("batch %d: %s", batch, entry)
        result[f"batch_{batch}"] = entry
    if sglang_dir is not None:
        del llm  # room for SGLang's own engine
        result["sglang_vs_hf"] = sglang_step_costs(slm, cfg, sglang_dir)
    return result
