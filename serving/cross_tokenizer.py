"""Routed decoding between an SLM and an LLM with different tokenizers.

The shared state is the generated text as bytes. Each model keeps a `ByteState` over its own
prompt and that text. The model that writes a piece continues from its own last token
(token-level, exact); a model that receives control after the other one wrote bytes is
conditioned on the exact byte prefix (its covers, one batched pass) and writes a cover's
token: a *leaf* whose bytes run past the prefix (`serving.byte_level`). So a handoff in the
middle of either model's token carries no tokenization bias. `Handoff.NAIVE` is the biased
baseline: decode to text, re-encode it, continue after that token boundary.

Exact means each handoff: the receiving model samples its P(continuation | exact bytes). The
writer's token boundary is not passed on; the other tokenizer cannot express it.

One step = one SLM pass (its pending token, or its covers after LLM bytes) for every request,
the router on the SLM's proposal, and one LLM pass for the flagged requests. Speculative
mode runs the same schedule: with different tokenizers a piece the LLM writes re-conditions
the SLM, so a block ends at its first flagged position and there is nothing to verify
beyond it (the LLM passes equal sequential routing's; the outputs are identical).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

import torch

from router.policies import RoutingPolicy
from serving.byte_level import ByteLevelLM, ByteState, Leaf
from serving.engine import drain, route_rows
from serving.generation import FinishReason, Generation, RoutingMode, Source
from serving.sampling import SamplingParams, make_generator
from serving.token_bytes import END


class Handoff(str, Enum):
    EXACT = "exact"  # condition on the byte prefix through its covers
    NAIVE = "naive"  # re-encode the text and continue after the forced token boundary


@dataclass
class Side:
    """One model of the pair: its byte-level view and how prompts are rendered for it."""

    blm: ByteLevelLM

    def context_and_tail(self, prompt_text: str) -> tuple[list[int], bytes]:
        """The prompt as (token context up to its last special token, the text bytes after it).

        Special tokens are hard boundaries; the text after the last one is conditioned on as
        bytes, like the generated text it runs into (in training they were one text)."""
        tok = self.blm.tokenizer
        ids = tok(prompt_text, add_special_tokens=True)["input_ids"]
        special = self.blm.vocab.special
        last = max((k for k, i in enumerate(ids) if special[i]), default=-1)
        if last < 0:
            return list(self.blm.default_context), self.blm.vocab.decode(ids)
        return ids[: last + 1], self.blm.vocab.decode(ids[last + 1:])


@dataclass
class CrossRequest:
    key: int
    params: SamplingParams
    policy: RoutingPolicy
    generator: torch.Generator
    slm: ByteState
    slm_tail: bytes  # the SLM prompt's text after its last special token
    llm_context: list[int]
    llm_tail: bytes
    out: Generation
    text: bytes = b""  # generated so far
    llm: ByteState | None = None  # opened on the first routed piece
    done: bool = False


class CrossEngine:
    """Requests of one cross-tokenizer pair, advanced together one piece at a time."""

    def __init__(self, slm: ByteLevelLM, llm: ByteLevelLM, handoff: Handoff = Handoff.EXACT,
                 context_length: int | None = None) -> None:
        self.slm, self.llm = Side(slm), Side(llm)
        self.handoff = handoff
        self.context_length = context_length or min(slm.backend.max_length, llm.backend.max_length)
        self.active: list[CrossRequest] = []

    def add(self, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
            modes: list[RoutingMode], keys: list[int]) -> list[CrossRequest]:
        """Start requests from SLM prompt ids (the same interface as the shared-tokenizer engine)."""
        decode = self.slm.blm.tokenizer.decode
        return self.add_texts([decode(p, skip_special_tokens=False) for p in prompts], params, policies, keys)

    def add_texts(self, prompts: list[str], params: list[SamplingParams], policies: list[RoutingPolicy],
                  keys: list[int]) -> list[CrossRequest]:
        """Start requests from prompt texts (special tokens written out, as a chat template renders them)."""
        slm_views = [self.slm.context_and_tail(p) for p in prompts]
        hidden = any(p.needs_hidden for p in policies)
        states = self.slm.blm.start([c for c, _ in slm_views], want_hidden=hidden)
        self.slm.blm.push(states, [t for _, t in slm_views], want_hidden=hidden)
        reqs = [CrossRequest(k, sp, pol, make_generator(sp.seed), st, tail, *self.llm.context_and_tail(p),
                             Generation(prompt_tokens=len(ctx)))
                for p, sp, pol, k, st, (ctx, tail) in zip(prompts, params, policies, keys, states, slm_views)]
        for r in reqs:
            r.out.stats.slm_passes += 2
        self.active += reqs
        return reqs

    def step(self) -> list[CrossRequest]:
        """One piece for every active request; returns those that finished (their memory freed)."""
        start = time.perf_counter()
        reqs = self.active
        self._sync(self.slm.blm, [r.slm for r in reqs], [r.slm_tail + r.text for r in reqs],
                   any(r.policy.needs_hidden for r in reqs))
        for r in reqs:
            r.out.stats.slm_passes += 1
        proposals = [self.slm.blm.pick_leaf(r.slm, r.params, r.generator) for r in reqs]
        scores, flagged = self._route(reqs, proposals)
        routed = [r for r, f in zip(reqs, flagged) if f]
        llm_leaves = dict(zip(map(id, routed), self._llm_leaves(routed)))
        for r, leaf, score, f in zip(reqs, proposals, scores, flagged):
            blm, state = (self.llm.blm, r.llm) if f else (self.slm.blm, r.slm)
            leaf = llm_leaves[id(r)] if f else leaf
            self._write(r, blm, state, leaf, Source.LLM if f else Source.SLM, score)
        elapsed = time.perf_counter() - start
        for r in reqs:
            r.out.stats.seconds += elapsed
        finished = [r for r in reqs if r.done]
        for r in finished:
            self._release(r)
        self.active = [r for r in reqs if not r.done]
        return finished

    def cancel(self, req: CrossRequest) -> None:
        if req in self.active:
            self.active.remove(req)
            self._release(req)

    # -- internals -----------------------------------------------------------------------------
    def _sync(self, blm: ByteLevelLM, states: list[ByteState], texts: list[bytes], want_hidden: bool) -> None:
        """Give each state the bytes of its text it has not seen, then evaluate all in one pass."""
        chunks = [text[len(s.text):] for s, text in zip(states, texts)]
        if self.handoff == Handoff.NAIVE:
            for s, chunk in zip(states, chunks):
                if chunk:
                    blm.resync_naive(s, chunk)
            blm.evaluate(states, want_hidden)
        else:
            blm.push(states, chunks, want_hidden)

    @staticmethod
    def _route(reqs: list[CrossRequest], proposals: list[Leaf]) -> tuple[list[float], list[bool]]:
        """The router on each SLM proposal: the row (cover) it came from holds the features."""
        rows = [r.slm.rows[leaf.split] for r, leaf in zip(reqs, proposals)]
        return route_rows([r.policy for r in reqs], [row.logits for row in rows], [row.hidden for row in rows],
                          [len(r.out.pieces) for r in reqs], [r.key for r in reqs])

    def _llm_leaves(self, reqs: list[CrossRequest]) -> list[Leaf]:
        """The LLM's piece for each routed request: conditioned on the text, one batched pass."""
        if not reqs:
            return []
        fresh = [r for r in reqs if r.llm is None]
        for r, state in zip(fresh, self.llm.blm.start([r.llm_context for r in fresh])):
            r.llm = state
            r.out.stats.llm_passes += 1
        self._sync(self.llm.blm, [r.llm for r in reqs], [r.llm_tail + r.text for r in reqs], False)
        for r in reqs:
            r.out.stats.llm_passes += 1
        return [self.llm.blm.pick_leaf(r.llm, r.params, r.generator) for r in reqs]

    def _write(self, r: CrossRequest, blm: ByteLevelLM, state: ByteState, leaf: Leaf, source: Source,
               score: float) -> None:
        r.out.sources.append(source)
        r.out.scores.append(float(score))
        r.out.stats.llm_tokens += int(source == Source.LLM)
        r.out.token_ids.append(leaf.token)
        if blm.vocab.first_byte[leaf.token] == END and not blm.vocab.table[leaf.token]:
            r.done, r.out.finish_reason = True, FinishReason.STOP
            return
        piece = blm.commit(state, leaf)
        r.text += piece
        r.out.pieces.append(piece)
        text = r.text.decode("utf-8", errors="replace")
        if r.params.stop and any(s in text for s in r.params.stop):
            r.done, r.out.finish_reason = True, FinishReason.STOP
        else:
            tokens = max(len(s.context) + len(s.root.ids) for s in (r.slm, r.llm) if s is not None and s.rows)
            if len(r.out.pieces) >= r.params.max_tokens or tokens >= self.context_length - 1:
                r.done, r.out.finish_reason = True, FinishReason.LENGTH

    def _release(self, r: CrossRequest) -> None:
        self.slm.blm.close(r.slm)
        if r.llm is not None:
            self.llm.blm.close(r.llm)
        text = r.text.decode("utf-8", errors="replace")
        cuts = [text.index(s) for s in r.params.stop if s in text]
        r.out.text = text[: min(cuts)] if cuts else text


def generate_cross(slm: ByteLevelLM, llm: ByteLevelLM, policy: RoutingPolicy, prompts: list[str],
                   params: list[SamplingParams], handoff: Handoff = Handoff.EXACT,
                   stream_keys: list[int] | None = None) -> list[Generation]:
    """Decode a fixed batch of prompt texts to the end (both routing modes run this schedule)."""
    engine = CrossEngine(slm, llm, handoff)
    keys = stream_keys if stream_keys is not None else list(range(len(prompts)))
    return drain(engine, engine.add_texts(prompts, params, [policy] * len(prompts), keys))
