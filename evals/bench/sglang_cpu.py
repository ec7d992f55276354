"""`r2r bench sglang`: the cost of an SGLang engine call against the HF backend's step, and routed decoding on the
testbed pair with either backend, the SLM drafting token by token or a whole block per call.

Both backends hold the same float32 weights and give the same tokens (tests/test_sglang_*.py prove it); what
differs is the fixed cost of a call. SGLang's offline `Engine` hands every request to its scheduler, which batches,
allocates KV slots and runs the model, then returns the result through the tokenizer manager: work that is small
beside a large model's pass on a GPU, and large beside a testbed model's pass on a CPU. Two measurements:

- `per_call`: one sequence per model, one token appended per call, HF and SGLang calls alternated (the machine is
  noisy: only what is measured side by side is compared); medians and their ratio.
- `idle_engines`: the cores the engines' processes keep busy while no request is in flight.
- `routed`: greedy speculative routing with the learned router on held-out prompts, every configuration (backend x
  drafting x batch) run once per round, rounds interleaved; output tokens per second, and whether every
  configuration produced the same tokens.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from r2r.router.policies import RoutingPolicy
from r2r.serving.backends.base import Backend
from r2r.serving.decoding.engine import BlockConfig, DraftCalls
from r2r.serving.decoding.routed import generate_speculative
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.stopping import StopRule
from r2r.serving.pair import PairSpec, load_pair


@dataclass(frozen=True)
class SGLangBenchConfig:
    batch_sizes: tuple[int, ...] = (1, 8)
    max_tokens: int = 128
    rounds: int = 3
    calls: int = 40  # one-token calls per model and backend for `per_call`
    drafts: tuple[DraftCalls, ...] = (DraftCalls.PER_TOKEN, DraftCalls.PER_BLOCK)

    def __post_init__(self) -> None:
        if min(self.max_tokens, self.rounds, self.calls, *self.batch_sizes) < 1:
            raise ValueError(f"batch sizes, max_tokens, rounds and calls must be positive: {self}")


@dataclass(frozen=True)
class BackendPair:
    """The testbed SLM and LLM behind one runtime."""

    name: str
    slm: Backend
    llm: Backend


def one_token_calls_ms(a: Backend, b: Backend, prompt: list[int], calls: int) -> tuple[list[float], list[float]]:
    """Milliseconds per one-token `extend` on two backends of the same model, calls alternated; each backend
    appends its own greedy token (they agree on the testbed, but the timing must not depend on it)."""
    timings: tuple[list[float], list[float]] = ([], [])
    opened = [backend.open([prompt])[0] for backend in (a, b)]
    tokens = [int(out.logits[-1].argmax()) for _, out in opened]
    try:
        for _ in range(calls):
            for i, backend in enumerate((a, b)):
                start = time.perf_counter()
                out = backend.extend([opened[i][0]], [[tokens[i]]])[0]
                timings[i].append((time.perf_counter() - start) * 1000)
                tokens[i] = int(out.logits[-1].argmax())
    finally:
        for backend, (seq, _) in zip((a, b), opened):
            backend.close(seq)
    return timings


def per_call(hf: BackendPair, sgl: BackendPair, prompt: list[int], calls: int) -> dict:
    result = {}
    for role in ("slm", "llm"):
        hf_ms, sgl_ms = one_token_calls_ms(getattr(hf, role), getattr(sgl, role), prompt, calls)
        hf_med, sgl_med = statistics.median(hf_ms), statistics.median(sgl_ms)
        result[role] = {"hf_ms": round(hf_med, 3), "sglang_ms": round(sgl_med, 3),
                        "sglang_over_hf": round(sgl_med / hf_med, 2),
                        "sglang_overhead_ms": round(sgl_med - hf_med, 3)}
    return result


def routed(pairs: list[BackendPair], policy: RoutingPolicy, prompts: list[list[int]], rule: StopRule,
           cfg: SGLangBenchConfig) -> dict:
    """Output tokens/s of greedy speculative routing for every (backend, drafting, batch), interleaved by round."""
    configs = [(pair, draft, batch) for batch in cfg.batch_sizes for pair in pairs for draft in cfg.drafts]
    seconds: dict[tuple, list[float]] = {c: [] for c in configs}
    outputs: dict[tuple, list[list[int]]] = {}
    llm_tokens: dict[tuple, int] = {}
    for _ in range(cfg.rounds):
        for pair, draft, batch in configs:
            batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
            params = [SamplingParams(max_tokens=cfg.max_tokens)] * batch
            start = time.perf_counter()
            gens = generate_speculative(pair.slm, pair.llm, policy, batch_prompts, params, rule,
                                        block=BlockConfig(draft_calls=draft))
            seconds[pair, draft, batch].append(time.perf_counter() - start)
            outputs[pair, draft, batch] = [g.token_ids for g in gens]
            llm_tokens[pair, draft, batch] = sum(g.stats.llm_tokens for g in gens)
    result: dict = {}
    for batch in cfg.batch_sizes:
        mine = [c for c in configs if c[2] == batch]
        entry: dict = {}
        for c in mine:
            pair, draft, _ = c
            tokens = sum(len(t) for t in outputs[c])
            entry[f"{pair.name}_{draft.value}"] = {"tokens_per_s": round(tokens / statistics.median(seconds[c]), 1),
                                                   "output_tokens": tokens,
                                                   "llm_share": round(llm_tokens[c] / tokens, 4)}
        entry["same_tokens"] = all(outputs[c] == outputs[mine[0]] for c in mine)
        result[f"batch_{batch}"] = entry
    return result


def idle_cpu_share(seconds: float) -> dict[str, float]:
    """CPU time this process's children (the engines' scheduler and detokenizer processes) use per second of
    wall time while no request is in flight: what the engines take from the cores before any work."""
    import psutil

    def cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    children = psutil.Process().children(recursive=True)
    before = {p.pid: cpu(p) for p in children}
    time.sleep(seconds)
    used = {f"{p.name()} {p.pid}": round((cpu(p) - before[p.pid]) / seconds, 3)
            for p in children if p.is_running()}
    return {"cores_busy_per_process": used, "cores_busy_total": round(sum(used.values()), 3), "seconds": seconds}


def bench_sglang(spec: PairSpec, cfg: SGLangBenchConfig) -> dict:
    """The benchmark JSON: `per_call`, `routed` and `meta` (what ran, on what). Needs sglang (`make bench-sglang`)."""
    import os

    import sglang

    from r2r.serving.backends.sglang import SGLangBackend, SGLangConfig, SGLangDevice
    from r2r.testbed.splits import heldout
    from r2r.testbed.tokenizer import chat_text

    hf = load_pair(spec, "cpu")
    policy = hf.learned_policy()
    rule = hf.stop_rule()
    prompts = [hf.tokenizer(chat_text(p.prompt))["input_ids"]
               for pair in zip(heldout("math", "test", 4), heldout("code", "test", 4)) for p in pair]
    load_before = os.getloadavg()
    engines = [SGLangBackend(SGLangConfig(str(path), device=SGLangDevice.CPU, dtype="float32",
                                          mem_fraction_static=fraction))
               for path, fraction in ((spec.slm, 0.15), (spec.llm, 0.3))]
    try:
        idle = idle_cpu_share(seconds=10.0)
        sgl = BackendPair("sglang", *engines)
        hf_pair = BackendPair("hf", hf.slm, hf.llm)
        result = {"per_call": per_call(hf_pair, sgl, prompts[0], cfg.calls),
                  "routed": routed([hf_pair, sgl], policy, prompts, rule, cfg)}
    finally:
        for engine in engines:
            engine.shutdown()
    result["idle_engines"] = idle
    result["meta"] = {"pair": spec.name, "device": "cpu", "sglang": sglang.__version__, "dtype": "float32",
                      "policy": f"learned, threshold {policy.threshold:.4f}", "mode": "speculative, greedy",
                      "max_tokens": cfg.max_tokens, "rounds": cfg.rounds, "calls": cfg.calls,
                      "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
                      "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    return result
