"""Cross-tokenizer routing on the testbed: does the exact byte-level handoff cost accuracy?

Three pairs share the SLM; each pair routes with its own pair's learned router, set to the same
target share:
  shared  SLM + LLM (one tokenizer, token-level routing: the reference point)
  exact   SLM + llm-x (another tokenizer, byte-conditioned handoff)
  naive   SLM + llm-x (decode to text, re-encode, continue after that token boundary)
exact and naive use the same router and threshold, so their difference is the handoff alone. The
cross pair's router should be trained on labels from SLM + llm-x: which SLM slips are divergent
depends on the LLM that would continue them (a router from the shared pair's labels under-routes
slips that only the shared LLM recovers from). Shares, accuracy and the forward passes per output
byte are measured, not assumed. Accuracy runs decode in speculative mode (greedy: the sequential completions,
with fewer LLM passes); the handoff's cost is measured in sequential mode, one handoff per routed piece.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from r2r.testbed.evaluate import solve_routed
from r2r.testbed.problem import grade
from r2r.testbed.splits import heldout
from r2r.testbed.tokenizer import chat_text
from r2r.router.policies import RandomPolicy, RoutingPolicy
from r2r.serving.byte_level.cross_tokenizer import Handoff, generate_cross
from r2r.serving.decoding.generation import Generation, RoutingMode
from r2r.serving.pair import ModelPair
from r2r.serving.decoding.sampling import SamplingParams

log = logging.getLogger(__name__)
MAX_NEW_TOKENS = 200


@dataclass(frozen=True)
class CrossBenchConfig:
    shares: tuple[float, ...] = (0.15, 0.25)
    families: tuple[str, ...] = ("math", "code")
    n_problems: int = 200
    batch_size: int = 50
    cost_rate: float = 0.2  # the random policy's LLM rate for the passes-per-byte comparison
    cost_problems: int = 50

    def __post_init__(self) -> None:
        if self.n_problems < 1 or self.batch_size < 1 or self.cost_problems < 1:
            raise ValueError(f"problem counts and batch size must be positive, got n_problems={self.n_problems}, "
                             f"batch_size={self.batch_size}, cost_problems={self.cost_problems}")
        if not self.shares or not all(0.0 < s < 1.0 for s in self.shares):
            raise ValueError(f"learned-router shares must be in (0, 1), got {self.shares}")


def _summary(problems, gens: list[Generation], texts: list[str]) -> dict:
    steps = sum(len(g.token_ids) for g in gens)
    return {"accuracy": sum(grade(p, t) for p, t in zip(problems, texts)) / len(problems),
            "llm_share": sum(g.stats.llm_tokens for g in gens) / max(1, steps), "steps": steps}


def run_shared(pair: ModelPair, policy: RoutingPolicy, problems, cfg: CrossBenchConfig) -> dict:
    gens = solve_routed(pair.slm, pair.llm, policy, pair.tokenizer, problems, cfg.batch_size, RoutingMode.SPECULATIVE)
    return _summary(problems, gens, [g.text for g in gens])


def _generate_batched(cross: ModelPair, policy: RoutingPolicy, prompts: list[str], handoff: Handoff,
                      batch_size: int, max_tokens: int,
                      mode: RoutingMode = RoutingMode.SEQUENTIAL) -> list[Generation]:
    """Greedy cross-tokenizer decoding of prompt texts, `batch_size` at a time (stream keys = prompt index)."""
    slm, llm = cross.byte_models()
    params = SamplingParams(max_tokens=max_tokens)
    gens: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens += generate_cross(slm, llm, policy, chunk, [params] * len(chunk), handoff,
                               stream_keys=list(range(start, start + len(chunk))), mode=mode)
    return gens


def run_cross(cross: ModelPair, policy: RoutingPolicy, problems, handoff: Handoff, cfg: CrossBenchConfig) -> dict:
    gens = _generate_batched(cross, policy, [chat_text(p.prompt) for p in problems], handoff, cfg.batch_size,
                             MAX_NEW_TOKENS, RoutingMode.SPECULATIVE)
    return _summary(problems, gens, [g.text for g in gens])


def handoff_cost(cross: ModelPair, prompts: list[str], handoff: Handoff, rate: float, batch_size: int,
                 max_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Forward passes (both models) per output byte and output bytes/s under random routing."""
    passes0 = cross.slm.forward_passes + cross.llm.forward_passes
    start = time.perf_counter()
    gens = _generate_batched(cross, RandomPolicy(rate=rate, seed=0), prompts, handoff, batch_size, max_tokens)
    seconds = time.perf_counter() - start
    out_bytes = sum(len(b"".join(g.pieces)) for g in gens)
    llm_pieces = sum(g.stats.llm_tokens for g in gens)
    pieces = sum(len(g.token_ids) for g in gens)
    passes = cross.slm.forward_passes + cross.llm.forward_passes - passes0
    return {"passes_per_byte": passes / max(1, out_bytes), "bytes_per_s": out_bytes / seconds,
            "output_bytes": out_bytes, "llm_share": llm_pieces / max(1, pieces), "seconds": round(seconds, 1)}


def cross_bench(shared: ModelPair, cross: ModelPair, cfg: CrossBenchConfig) -> dict:
    routers = {"shared": shared.learned_policy(), "cross": cross.learned_policy()}
    result: dict = {"config": cfg.__dict__ | {"shares": list(cfg.shares), "families": list(cfg.families)},
                    "pairs": {"shared": [str(shared.spec.slm), str(shared.spec.llm)],
                              "cross": [str(cross.spec.slm), str(cross.spec.llm)]},
                    "routers": {"shared": str(shared.spec.router), "cross": str(cross.spec.router)}}
    for family in cfg.families:
        problems = heldout(family, "test", cfg.n_problems)
        rows = {}
        for share in cfg.shares:
            thresholds = {name: r.threshold_for_share(share) for name, r in routers.items()}
            shared_policy = routers["shared"].with_threshold(thresholds["shared"])
            cross_policy = routers["cross"].with_threshold(thresholds["cross"])
            row = {"thresholds": thresholds,
                   "shared": run_shared(shared, shared_policy, problems, cfg),
                   "exact": run_cross(cross, cross_policy, problems, Handoff.EXACT, cfg),
                   "naive": run_cross(cross, cross_policy, problems, Handoff.NAIVE, cfg)}
            row["exact_minus_shared"] = row["exact"]["accuracy"] - row["shared"]["accuracy"]
            row["exact_minus_naive"] = row["exact"]["accuracy"] - row["naive"]["accuracy"]
            log.info("%s share %.2f: %s", family, share, row)
            rows[f"{share:.2f}"] = row
        result[family] = rows
    prompts = [chat_text(p.prompt) for p in heldout("math", "test", cfg.cost_problems)]
    result["cost"] = {h.value: handoff_cost(cross, prompts, h, cfg.cost_rate, cfg.batch_size) for h in Handoff}
    result["cost"]["exact_over_naive_passes"] = (result["cost"]["exact"]["passes_per_byte"]
                                                 / result["cost"]["naive"]["passes_per_byte"])
    return result


# short chat prompts for the handoff-cost bench on real pairs (testbed prompts suit only the testbed tokenizers)
HANDOFF_PROMPTS = [
    "What is the capital of France? Answer in one sentence.", "Name three primary colors.",
    "Write one sentence about the ocean.", "What is 12 plus 30?", "Give a synonym for happy.",
    "Describe a cat in one sentence.", "What day comes after Monday?", "Why is the sky blue? Be brief.",
    "List two fruits that are red.", "Say hello in French.", "What is water made of?", "Who wrote Hamlet?",
]
