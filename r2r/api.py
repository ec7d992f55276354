"""The public Python API: load a pair, generate routed text.

    import r2r
    pair = r2r.load_pair("testbed")
    out = pair.generate(["What is 12 plus 30?"], policy="learned", llm_share=0.1)
    out[0].text, out[0].sources, out[0].stats

Prompts are chat messages of the user by default (the pair's chat template), or raw text with `chat=False`.
Heavy modules load on first use, so `import r2r` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from r2r.serving.decoding.generation import Generation
    from r2r.serving.pair import ModelPair


@dataclass
class Pair:
    """A loaded SLM/LLM pair (`model_pair` is the serving object, for everything beyond `generate`)."""

    model_pair: ModelPair

    def generate(self, prompts: list[str], policy: str | None = None, threshold: float | None = None,
                 llm_share: float | None = None, mode: str = "speculative", max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 stop: tuple[str, ...] = (), chat: bool = True) -> list[Generation]:
        """Routed generation, one result per prompt: `.text`, `.token_ids`, `.sources` (which model wrote each
        token), `.finish_reason`, `.stats` (LLM tokens, passes, seconds). `policy`: learned (the default when
        the pair has a router), entropy, confidence, random, slm or llm; `threshold` or `llm_share` set its
        operating point (default: the router's calibrated default)."""
        from r2r.router.policies import PolicyKind
        from r2r.serving.decoding.generation import RoutingMode
        from r2r.serving.decoding.sampling import SamplingParams

        pair = self.model_pair
        if isinstance(prompts, str):
            raise ValueError("prompts is a list of strings; wrap a single prompt in a list")
        kind = PolicyKind(policy) if policy else pair.default_policy
        routing = pair.policy(kind, threshold, llm_share, seed or 0)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                seed=seed, stop=tuple(stop))
        ids = [pair.encode_chat([{"role": "user", "content": p}]) if chat else pair.encode_text(p) for p in prompts]
        return pair.generate(routing, ids, [params] * len(ids), RoutingMode(mode))


def load_pair(name: str = "testbed", slm: str | Path | None = None, llm: str | Path | None = None,
              router: str | Path | None = None, device: str | None = None) -> Pair:
    """A preset pair by name (testbed, testbed-x, smol-gemma, ...) or explicit `slm` and `llm` directories, on the
    transformers backend (`device`: cpu or cuda; default cuda when available)."""
    from r2r.serving.pair import load_pair as load, resolve_pair

    spec = resolve_pair(name, None if slm is None else str(slm), None if llm is None else str(llm),
                        None if router is None else str(router))
    return Pair(load(spec, device))
