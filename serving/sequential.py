"""Sequential routed decoding: the reference semantics every faster mode must reproduce.

Glossary
  SLM / LLM      the small model that proposes every token / the large model that writes routed ones.
  flagged        a position whose router score exceeds the threshold: the LLM writes that token.
  catch-up       the LLM is lazy: it only sees the tokens written since its last pass when it is
                 next needed, all of them in one extend.

At each step the SLM's logits (and hidden state) at the current position are scored by the
policy; flagged sequences get their token from the LLM (after catch-up), the rest from the
SLM; then every active sequence appends its token to the SLM in one batched pass.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from router.policies import RouteInput, RoutingPolicy, flags
from serving.backends.base import Backend, SequenceHandle, StepOutput
from serving.generation import FinishReason, Generation, Source
from serving.sampling import SamplingParams, choose_token, make_generator


@dataclass
class _Live:
    """Decoding state of one request."""

    index: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    slm: SequenceHandle
    slm_out: StepOutput  # SLM outputs at the last appended position
    out: Generation
    llm: SequenceHandle | None = None
    llm_seen: int = 0  # tokens of prompt+generated the LLM holds in its KV
    done: bool = False

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out.token_ids


@dataclass
class StopRule:
    """When a sequence ends: EOS ids, stop strings (on decoded text) and length limits."""

    eos_ids: frozenset[int]
    decode: Callable[[list[int]], str]
    context_length: int

    def check_tokens(self, prompt: list[int], ids: list[int], params: SamplingParams) -> FinishReason | None:
        """Why generation must end after `ids`, or None to go on."""
        if ids and ids[-1] in self.eos_ids:
            return FinishReason.STOP
        if params.stop and any(s in self.decode(ids) for s in params.stop):
            return FinishReason.STOP
        if len(ids) >= params.max_tokens or len(prompt) + len(ids) >= self.context_length:
            return FinishReason.LENGTH
        return None

    def text_of(self, ids: list[int], stop: tuple[str, ...] = ()) -> str:
        """Decoded text without a final EOS, cut before the first stop string."""
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        text = self.decode(ids)
        cuts = [text.index(s) for s in stop if s in text]
        return text[: min(cuts)] if cuts else text


def generate_sequential(
    slm: Backend, llm: Backend, policy: RoutingPolicy, prompts: list[list[int]], params: list[SamplingParams],
    stop_rule: StopRule, stream_keys: list[int] | None = None,
) -> list[Generation]:
    """Decode every prompt with sequential routing, batched across prompts."""
    assert len(prompts) == len(params), "one SamplingParams per prompt"
    if not prompts:
        return []
    keys = stream_keys if stream_keys is not None else list(range(len(prompts)))
    start = time.perf_counter()
    opened = slm.open(prompts, want_hidden=policy.needs_hidden)
    lives = [
        _Live(i, list(p), sp, make_generator(sp.seed), seq, out, Generation(prompt_tokens=len(p)))
        for i, (p, sp, (seq, out)) in enumerate(zip(prompts, params, opened))
    ]
    for live in lives:
        live.out.stats.slm_passes += 1
    active = lives
    while active:
        route_in = RouteInput(
            logits=torch.stack([lv.slm_out.logits[-1] for lv in active]),
            hidden=torch.stack([lv.slm_out.hidden[-1] for lv in active]) if policy.needs_hidden else None,
            positions=[len(lv.tokens) for lv in active],
            stream_keys=[keys[lv.index] for lv in active],
        )
        scores, flagged = flags(policy, route_in)
        routed = [lv for lv, f in zip(active, flagged.tolist()) if f]
        llm_logits = _llm_catch_up(llm, routed)
        for lv, score, f in zip(active, scores.tolist(), flagged.tolist()):
            logits = llm_logits[lv.index] if f else lv.slm_out.logits[-1]
            lv.out.token_ids.append(choose_token(logits, lv.params, lv.generator))
            lv.out.sources.append(Source.LLM if f else Source.SLM)
            lv.out.scores.append(float(score))
            lv.out.stats.llm_tokens += int(f)
            reason = stop_rule.check_tokens(lv.prompt, lv.out.token_ids, lv.params)
            if reason is not None:
                lv.done, lv.out.finish_reason = True, reason
        active = [lv for lv in active if not lv.done]
        if active:
            outs = slm.extend([lv.slm for lv in active], [[lv.out.token_ids[-1]] for lv in active],
                              want_hidden=policy.needs_hidden)
            for lv, o in zip(active, outs):
                lv.slm_out = o
                lv.out.stats.slm_passes += 1
    elapsed = time.perf_counter() - start
    for lv in lives:
        slm.close(lv.slm)
        if lv.llm is not None:
            llm.close(lv.llm)
        lv.out.text = stop_rule.text_of(lv.out.token_ids, lv.params.stop)
        lv.out.stats.seconds = elapsed
    return [lv.out for lv in lives]


def _llm_catch_up(llm: Backend, routed: list[_Live]) -> dict[int, torch.Tensor]:
    """Feed each routed sequence's unseen tokens to the LLM; return its next-token logits per request index."""
    result: dict[int, torch.Tensor] = {}
    fresh = [lv for lv in routed if lv.llm is None]
    if fresh:
        for lv, (seq, out) in zip(fresh, llm.open([lv.tokens for lv in fresh])):
            lv.llm, lv.llm_seen = seq, len(lv.tokens)
            lv.out.stats.llm_passes += 1
            result[lv.index] = out.logits[-1]
    behind = [lv for lv in routed if lv.index not in result]
    if behind:
        outs = llm.extend([lv.llm for lv in behind], [lv.tokens[lv.llm_seen :] for lv in behind])
        for lv, out in zip(behind, outs):
            lv.llm_seen = len(lv.tokens)
            lv.out.stats.llm_passes += 1
            result[lv.index] = out.logits[-1]
    return result
