"""`r2r bench long`: reasoning-length outputs at a real vocabulary, on random-weight models.

Random-weight Qwen2 models with the testbed SLM's and LLM's layer shapes and R1-Distill-Qwen's 151,936-token
vocabulary, built in memory, decode `new_tokens` tokens per request (EOS ignored) with routed speculative decoding
and the random policy at `share`. What it reads: the wall time of each 1k-token window of output positions
(`ms_per_token_by_window`: ms for the batch's mean output position to advance by one, clocked at the SLM's
forward passes; rows drift apart, and the positions they were at when the first one finished, with the seconds
the others took after it, are reported beside), the peak resident memory of the run, and the weights plus the
KV of the tokens held at the end. A per-token cost that grows with the output (beyond attention's own linear
term) or memory beyond weights + KV shows up here long before a real pair meets it.

Attention's own term is measured apart: every layer's attention as the HF backend runs it (`grouped_sdpa`: each
key/value head's query heads as its query rows, no copy of the keys and values) at the second and the last
window's middle length, times the passes per output position each model ran. Its growth from the second window
to the last, beside the measured growth, says how much of it is attention's.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r2r.evals.bench.gpu_costs import Shape
from r2r.router.policies import RandomPolicy
from r2r.serving.backends.grouped_attention import GROUPED_MASK, grouped_mask, grouped_sdpa
from r2r.serving.backends.hf import HFBackend
from r2r.serving.decoding.routed import generate_speculative
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.stopping import StopRule

log = logging.getLogger(__name__)

R1_VOCAB = 151_936


# the testbed models' layer shapes at R1-Distill-Qwen's vocabulary
TESTBED_SLM = Shape("testbed-slm", 128, 2, 4, 2, 384, R1_VOCAB)
TESTBED_LLM = Shape("testbed-llm", 256, 36, 8, 4, 768, R1_VOCAB)


@dataclass(frozen=True)
class LongBenchConfig:
    batch_sizes: tuple[int, ...] = (1, 8)
    new_tokens: int = 16_384
    window: int = 1_024
    share: float = 0.1
    prompt_tokens: int = 32
    seed: int = 0
    shapes: tuple[Shape, Shape] = field(default=(TESTBED_SLM, TESTBED_LLM))

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}")
        if self.new_tokens < 2 * self.window or self.window < 1:
            raise ValueError(f"need at least two windows of output: new_tokens {self.new_tokens}, "
                             f"window {self.window}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {self.share}")


def build_random_backend(shape: Shape, context: int, seed: int) -> HFBackend:
    """A random-weight Qwen2 of `shape` with `context` positions, in float32 on the CPU (seeded, not global)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=context,
                         tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return HFBackend.from_model(model, f"random-{shape.name}-v{shape.vocab}", f"random-{shape.name}-{seed}")


def kv_bytes_per_token(shape: Shape) -> int:
    """float32 K and V of one position over every layer."""
    return shape.layers * 2 * shape.kv_heads * (shape.hidden // shape.heads) * 4


class BatchClock:
    """(time, the batch's mean output position) at each SLM forward pass, and when its first request finished.

    A request's position is what the SLM holds of it (its KV row, less the prompt); one that closed counts as
    finished. The mean, not the furthest row: rows drift apart (each round a row commits up to its own first
    rejected flag), and a clock on the furthest row puts every other row's tail in the last window."""

    def __init__(self, slm: HFBackend, batch: int, prompt_tokens: int, total: int) -> None:
        self.slm, self.batch, self.prompt_tokens, self.total = slm, batch, prompt_tokens, total
        self.events: list[tuple[float, float]] = [(time.perf_counter(), 0.0)]
        self.opened = 0  # the most requests the SLM has held at once
        self.first_finished: tuple[float, list[int]] | None = None  # (time, positions of the rows still held)

    def __call__(self, _module, _args, _kwargs) -> None:
        now = time.perf_counter()
        held = [min(max(n - self.prompt_tokens, 0), self.total) for n in self.slm.held_lengths]
        self.opened = max(self.opened, len(held))
        finished = self.opened - len(held)
        if finished and self.first_finished is None:
            self.first_finished = (now, held)
        mean = (sum(held) + finished * self.total) / self.batch
        self.events.append((now, max(mean, self.events[-1][1])))

    def ms_per_token_by_window(self, window: int) -> list[float]:
        """Wall ms per output position of the batch's mean within each full window [w * window, (w + 1) * window)."""
        firsts: dict[int, float] = {}
        for t, pos in self.events:
            for edge in range(0, self.total + 1, window):
                if pos >= edge and edge not in firsts:
                    firsts[edge] = t
        edges = sorted(firsts)
        return [round((firsts[b] - firsts[a]) * 1000 / window, 3) for a, b in zip(edges, edges[1:])]

    def tail(self, end: float) -> dict:
        """The rows' drift when the first request finished: the others' positions then, and the seconds left."""
        if self.first_finished is None:
            return {}
        t, held = self.first_finished
        return {"positions_when_first_finished": sorted(held), "tail_s": round(end - t, 1)}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: clear_refs 5); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    """This process's peak resident memory since the last reset (VmHWM), else since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def attention_ms(shape: Shape, batch: int, keys: int, queries: int, reps: int = 5) -> float:
    """Median wall ms of one pass's attention alone: every layer's SDPA of `queries` new positions over `keys`
    cached ones for `batch` rows, float32 on this CPU (the part of a pass that grows with the output)."""
    head_dim = shape.hidden // shape.heads
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, shape.heads, queries, head_dim, generator=gen)
    k, v = (torch.randn(batch, shape.kv_heads, keys, head_dim, generator=gen) for _ in range(2))
    mask = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)[None, None]
    layer_module = torch.nn.Module().eval()

    times = []
    with torch.inference_mode():
        for _ in range(reps):
            start = time.perf_counter()
            # as the HF backend runs a pass: a wider one's mask laid out once, then each layer's attention function
            prebuilt = {GROUPED_MASK: grouped_mask(mask, shape.heads // shape.kv_heads, q.dtype)} if queries > 1 else {}
            for _ in range(shape.layers):
                grouped_sdpa(layer_module, q, k, v, mask, scaling=head_dim ** -0.5, **prebuilt)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def attention_by_window(cfg: LongBenchConfig, batch: int, slm_passes: int, llm_passes: int,
                        windows: list[float]) -> dict:
    """Attention's ms per output position at the second and the last window's middle, and its share there.

    Each SLM pass feeds one position per row; the LLM's passes feed the rest of each row's positions in
    `new_tokens / llm_passes`-wide catch-ups, so both models' passes per output position come from the counts."""
    slm_shape, llm_shape = cfg.shapes
    width = max(1, round(cfg.new_tokens / max(llm_passes, 1)))
    per_position = {}
    for name, index in (("second", 1), ("last", len(windows) - 1)):
        keys = cfg.prompt_tokens + int((index + 0.5) * cfg.window)
        per_position[name] = (slm_passes / cfg.new_tokens * attention_ms(slm_shape, batch, keys, 1)
                              + llm_passes / cfg.new_tokens * attention_ms(llm_shape, batch, keys, width))
    return {"attention_ms_per_token": {k: round(v, 3) for k, v in per_position.items()},
            "attention_share_last_window": round(per_position["last"] / windows[-1], 3),
            "growth_second_to_last_ms": round(windows[-1] - windows[1], 3),
            "attention_growth_second_to_last_ms": round(per_position["last"] - per_position["second"], 3)}


def run_batch(slm: HFBackend, llm: HFBackend, batch: int, cfg: LongBenchConfig) -> dict:
    """One batch size's measurement (see the module docstring)."""
    gen = torch.Generator().manual_seed(cfg.seed + batch)
    prompts = torch.randint(10, slm.vocab_size, (batch, cfg.prompt_tokens), generator=gen).tolist()
    context = cfg.prompt_tokens + cfg.new_tokens
    rule = StopRule(frozenset(), lambda ids: "", context)  # no EOS, no stop strings: every request runs to the end
    params = [SamplingParams(max_tokens=cfg.new_tokens)] * batch
    clock = BatchClock(slm, batch, cfg.prompt_tokens, cfg.new_tokens)
    hook = slm.model.get_decoder().register_forward_pre_hook(clock, with_kwargs=True)  # what each pass runs
    reset = _reset_peak_rss()
    passes = slm.forward_passes, llm.forward_passes
    start = time.perf_counter()
    try:
        gens = generate_speculative(slm, llm, RandomPolicy(rate=cfg.share, seed=cfg.seed), prompts, params, rule)
    finally:
        hook.remove()
    end = time.perf_counter()
    clock.events.append((end, cfg.new_tokens))  # the last position is sampled, never fed
    seconds = end - start
    slm_passes, llm_passes = slm.forward_passes - passes[0], llm.forward_passes - passes[1]
    peak_rss = _peak_rss_gib()  # before the attention measurement's own tensors
    tokens = sum(len(g.token_ids) for g in gens)
    assert tokens == batch * cfg.new_tokens, f"{tokens} tokens decoded, expected {batch * cfg.new_tokens}"
    slm_shape, llm_shape = cfg.shapes
    weights = sum(p.numel() * p.element_size() for b in (slm, llm) for p in b.model.parameters())
    kv = batch * context * (kv_bytes_per_token(slm_shape) + kv_bytes_per_token(llm_shape))
    windows = clock.ms_per_token_by_window(cfg.window)
    return {"ms_per_token_by_window": windows,
            "last_over_second_window": round(windows[-1] / windows[1], 3),
            "tokens_per_s": round(tokens / seconds, 1),
            "llm_share": round(sum(g.stats.llm_tokens for g in gens) / tokens, 4),
            "peak_rss_gib": round(peak_rss, 3), "peak_rss_since": "this run" if reset else "process start",
            "weights_plus_kv_gib": round((weights + kv) / 2**30, 3),
            "passes": {"slm": slm_passes, "llm": llm_passes}, **clock.tail(end),
            **attention_by_window(cfg, batch, slm_passes, llm_passes, windows)}


def bench_long(cfg: LongBenchConfig) -> dict:
    """The long-output benchmark JSON: one entry per batch size, and `meta`."""
    context = cfg.prompt_tokens + cfg.new_tokens
    slm, llm = (build_random_backend(shape, context, cfg.seed + i) for i, shape in enumerate(cfg.shapes))
    result: dict = {}
    for batch in cfg.batch_sizes:
        log.info("batch %d: %d tokens per request", batch, cfg.new_tokens)
        result[f"batch_{batch}"] = run_batch(slm, llm, batch, cfg)
    slm_shape, llm_shape = cfg.shapes
    result["meta"] = {
        "models": {s.name: {"hidden": s.hidden, "layers": s.layers, "heads": s.heads, "kv_heads": s.kv_heads,
                            "intermediate": s.intermediate, "vocab": s.vocab} for s in cfg.shapes},
        "new_tokens": cfg.new_tokens, "window": cfg.window, "prompt_tokens": cfg.prompt_tokens,
        "policy": f"random, share {cfg.share}", "mode": "speculative, greedy",
        "ms_per_token": "wall ms for the batch's mean output position to advance one position, per window",
        "kv_bytes_per_token": {slm_shape.name: kv_bytes_per_token(slm_shape),
                               llm_shape.name: kv_bytes_per_token(llm_shape)},
        "torch_threads": torch.get_num_threads(),
    }
    return result


def plot_long(result: dict, out: Path) -> None:
    """ms per token against output position, each batch size (and the `before` run's, dashed, when present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = result["meta"]["window"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, run, style in (("after", result, "-"), ("before", result.get("before"), "--")):
        for key, entry in (run or {}).items():
            if key.startswith("batch_"):
                ms = entry["ms_per_token_by_window"]
                ax.plot([(i + 1) * window for i in range(len(ms))], ms, style, marker="o", markersize=3,
                        label=f"{key.replace('_', ' ')} ({label})")
    ax.set_xlabel("output position (end of window)")
    ax.set_ylabel("ms per output position")
    ax.set_title(f"routed speculative, random policy, vocab {next(iter(result['meta']['models'].values()))['vocab']:,}")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
