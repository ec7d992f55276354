"""Policy sweeps: every policy at several thresholds on one task, resumable per problem.

Each (policy, setting) run appends one JSON line per finished problem to runs/<key>.jsonl;
re-running skips the problems already there, so a killed sweep loses at most one batch.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from r2r.evals.tasks import EvalProblem, Task
from r2r.router.policies import PolicyKind, RoutingPolicy
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.pair import ModelPair
from r2r.serving.decoding.sampling import SamplingParams

log = logging.getLogger(__name__)

# every policy's settings, the x-axis of its curve: learned = LLM-share budgets, random = rates,
# confidence/entropy = thresholds (both scores lie in [0, 1])
GRID: dict[PolicyKind, tuple[float, ...]] = {
    PolicyKind.SLM: (0.0,), PolicyKind.LLM: (1.0,),
    PolicyKind.LEARNED: (0.05, 0.1, 0.15, 0.2, 0.3),
    PolicyKind.RANDOM: (0.05, 0.1, 0.15, 0.2, 0.3),
    PolicyKind.CONFIDENCE: (0.5, 0.3, 0.2, 0.1, 0.05),
    PolicyKind.ENTROPY: (0.5, 0.3, 0.2, 0.1, 0.05),
}
# the policies `r2r eval` sweeps unless told (`--policies`): entropy only on request, confidence is the
# training-free baseline the plots compare against
DEFAULT_POLICIES = (PolicyKind.SLM, PolicyKind.LLM, PolicyKind.LEARNED, PolicyKind.RANDOM, PolicyKind.CONFIDENCE)


@dataclass(frozen=True)
class SweepConfig:
    task: str
    out_dir: Path
    policies: tuple[PolicyKind, ...] = DEFAULT_POLICIES
    limit: int | None = None
    batch_size: int = 16
    mode: RoutingMode = RoutingMode.SPECULATIVE
    max_tokens: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be positive, got {self.limit}")


def policy_for(pair: ModelPair, kind: PolicyKind, value: float, seed: int) -> RoutingPolicy:
    if kind in (PolicyKind.LEARNED, PolicyKind.RANDOM):
        return pair.policy(kind, llm_share=value, seed=seed)
    if kind in (PolicyKind.SLM, PolicyKind.LLM):
        return pair.policy(kind)
    return pair.policy(kind, threshold=value)


def _done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut by a kill: that problem is redone
    return done


def run_identity(pair: ModelPair, task: Task, cfg: SweepConfig) -> dict:
    """What a run's rows depend on: resuming is only sound when all of it is unchanged. The router's identity
    is its own fingerprint (weights and router.json, thresholds included): a changed default threshold is a
    changed run."""
    from r2r.serving.backends.fingerprint import router_fingerprint

    router = pair.spec.router
    return {"task": task.name, "slm": pair.slm.fingerprint, "llm": pair.llm.fingerprint,
            "router": router_fingerprint(router) if router is not None and (router / "router.json").exists() else None,
            "mode": cfg.mode.value, "max_tokens": cfg.max_tokens, "seed": cfg.seed}


def _check_resumable(out_dir: Path, identity: dict) -> None:
    """Refuse to append to a run made with other models or settings (its rows would be mixed in)."""
    meta_path = out_dir / "meta.json"
    if not (out_dir / "runs").exists() or not meta_path.exists():
        return
    old = json.loads(meta_path.read_text()).get("identity")
    if old != identity:
        changed = sorted(k for k in identity if (old or {}).get(k) != identity[k])
        raise ValueError(f"{out_dir} holds a run made with other models or settings ({', '.join(changed)} differ); "
                         "pass another --out, or remove it to start over")


def run_sweep(pair: ModelPair, task: Task, problems: list[EvalProblem], cfg: SweepConfig, progress=None) -> None:
    runs = cfg.out_dir / "runs"
    identity = run_identity(pair, task, cfg)
    _check_resumable(cfg.out_dir, identity)
    runs.mkdir(parents=True, exist_ok=True)
    meta = {"task": task.name, "pair": pair.spec.name, "mode": cfg.mode.value, "n_problems": len(problems),
            "max_tokens": cfg.max_tokens, "identity": identity,
            "slm_params": pair.slm.n_parameters, "llm_params": pair.llm.n_parameters}
    (cfg.out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    prompts = {p.id: pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems}
    settings = [(k, v) for k in cfg.policies for v in GRID[k]]
    for kind, value in settings:
        key = f"{kind.value}@{value}"
        path = runs / f"{key}.jsonl"
        done = _done(path)
        todo = [p for p in problems if p.id not in done]
        policy = policy_for(pair, kind, value, cfg.seed)
        params = SamplingParams(max_tokens=cfg.max_tokens)
        with path.open("a", encoding="utf-8") as out:
            for i in range(0, len(todo), cfg.batch_size):
                batch = todo[i : i + cfg.batch_size]
                start = time.perf_counter()
                gens = pair.generate(policy, [prompts[p.id] for p in batch], [params] * len(batch), cfg.mode)
                seconds = time.perf_counter() - start
                for p, g in zip(batch, gens):
                    row = {"id": p.id, "correct": bool(task.grade(p, g.text)), "tokens": len(g.token_ids),
                           "llm_tokens": g.stats.llm_tokens, "seconds": seconds / len(batch),
                           "batch_seconds": seconds}
                    out.write(json.dumps(row) + "\n")
                out.flush()
                if progress:
                    progress(key, min(len(done) + i + len(batch), len(problems)), len(problems))
