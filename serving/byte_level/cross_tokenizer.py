"""Routed decoding between an SLM and an LLM with different tokenizers.

The shared state is the generated text as bytes. Each model keeps a `ByteState` over its own
prompt and that text. The model that writes a piece continues from its own last token
(token-level, exact); a model that receives control after the other one wrote bytes is
conditioned on the exact byte prefix (its covers, one batched pass) and writes a cover's
token: a *leaf* whose bytes run past the prefix (`serving.byte_level.probabilities`). So a handoff in the
middle of either model's token carries no tokenization bias. `Handoff.NAIVE` is the biased
baseline: decode to text, re-encode it, continue after that token boundary.

Exact means each handoff: the receiving model samples its P(continuation | exact bytes). The
writer's token boundary is not passed on; the other tokenizer cannot express it.

Sequential step = one SLM pass (its pending token, or its covers after LLM bytes) for every
request, the router on the SLM's proposal, and one LLM pass for the flagged requests.

Speculative round: the one the token-level engine runs (`serving.decoding.rounds`: block sizes, requests
joining a round in progress and riding along, the commit order); what differs is how pieces are drafted and
judged (`PieceSpeculator`). The SLM drafts up to k pieces; at a flagged draft it assumes the LLM will write the
same bytes and goes on conditioned on them *as bytes* (exactly what it would see after an LLM piece),
keeping a snapshot to roll back to. One LLM pass then gives the LLM's
distribution over pieces at every flagged prefix (a copy of the LLM state each, sharing its KV), and the block is
accepted up to the first flagged position where the LLM writes other bytes, which it writes
instead: greedy, the LLM's most probable leaf; sampling, the speculative test over pieces
(accept the draft piece s with min(1, p(s)/q(s)), else draw from norm(max(p - q, 0))), p and q
each summed over the leaves that add s. A flagged draft right after a flagged draft ends the
block and opens the next one (its LLM piece needs the LLM's own token path after the first).
Same output as sequential routing (greedy) or the same distribution (sampling), never more LLM
passes.

Where the router's flag depends on which cover the SLM's proposal came from (several covers
are live after a handoff), a flagged draft is a draw from q restricted to the flagged covers,
and that restricted q is what the test uses.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from enum import Enum

import torch

from r2r.router.policies import AlwaysSLM, RoutingPolicy
from r2r.router.rows import RowKind
from r2r.serving.byte_level.probabilities import ByteLevelLM, ByteState, Leaf, LeafTable
from r2r.serving.decoding.engine import SteppedEngine, drain, route_rows
from r2r.serving.decoding.generation import FinishReason, Generation, RoutingMode, Source
from r2r.serving.decoding.rounds import DRAFT, VERIFY, BlockConfig, RoundRequest, round_step
from r2r.serving.decoding.sampling import SamplingParams, make_generator
from r2r.serving.decoding.stop_scan import StopScan
from r2r.serving.decoding.stopping import cut_at_stop, stop_or_length

_MAX_RESIDUAL_DRAWS = 100_000


class Handoff(str, Enum):
    EXACT = "exact"  # condition on the byte prefix through its covers
    NAIVE = "naive"  # re-encode the text and continue after the forced token boundary


@dataclass
class Side:
    """One model of the pair: its byte-level view and how prompts are rendered for it."""

    blm: ByteLevelLM

    def context_and_tail(self, prompt_text: str, as_bytes: bool = False) -> tuple[list[int], bytes]:
        """The prompt as (token context, text bytes conditioned on through covers).

        By default the whole prompt is the token context, tokenized as at training and serving
        time: prompt positions were never prediction targets (the loss is on the answer), so
        covers that re-tokenize the prompt's last bytes would be weighed by untrained
        probabilities. `as_bytes` keeps only up to the last special token as context and treats
        the rest as a byte prefix (what a handoff in the middle of text is)."""
        tok = self.blm.tokenizer
        ids = tok(prompt_text, add_special_tokens=True)["input_ids"]
        if not as_bytes:
            return (ids or list(self.blm.default_context)), b""
        special = self.blm.vocab.special
        last = max((k for k, i in enumerate(ids) if special[i]), default=-1)
        if last < 0:
            return list(self.blm.default_context), self.blm.vocab.decode(ids)
        return ids[: last + 1], self.blm.vocab.decode(ids[last + 1:])


@dataclass
class _Draft:
    leaf: Leaf
    piece: bytes  # b"" for end of text
    flagged: bool
    score: float
    table: LeafTable  # the SLM's leaves where it was drawn
    q: torch.Tensor | None  # sampling: [leaves] what it was drawn from (flagged: restricted to flagged covers)
    position: int  # pieces of output before it (its random streams)
    text_before: int = 0  # len(request.text) when it joined a block
    snapshot: ByteState | None = None  # the SLM's state before it (flagged drafts: the rollback point)


@dataclass(eq=False)
class CrossRequest(RoundRequest[_Draft]):
    """Decoding state of one request over bytes (its output, randomness and speculative round: `RoundRequest`)."""

    key: int
    params: SamplingParams
    policy: RoutingPolicy
    slm: ByteState
    slm_tail: bytes  # the SLM prompt's text after its last special token
    llm_context: list[int]
    llm_tail: bytes
    text: bytearray = field(default_factory=bytearray)  # given prefix + generated so far (appended in place)
    start: int = 0  # bytes of `text` given as a prefix (not part of the output)
    ends: list[int] = field(default_factory=list)  # where each of out.pieces ends in `text`
    stops: StopScan | None = None  # stop strings over text[start:], checked incrementally (None: no stop strings)
    mode: RoutingMode = RoutingMode.SEQUENTIAL
    llm: ByteState | None = None  # opened on the first routed piece
    carry: _Draft | None = None  # a flagged draft that opens the next speculative block


class CrossEngine(SteppedEngine):
    """Requests of one cross-tokenizer pair, advanced together one piece at a time."""

    def __init__(self, slm: ByteLevelLM, llm: ByteLevelLM, handoff: Handoff = Handoff.EXACT,
                 context_length: int | None = None, block: BlockConfig | None = None,
                 prompt_as_bytes: bool = False) -> None:
        super().__init__(block)
        self.slm, self.llm = Side(slm), Side(llm)
        self.handoff = handoff
        self.prompt_as_bytes = prompt_as_bytes
        self.context_length = context_length or min(slm.backend.max_length, llm.backend.max_length)

    def add(self, prompts: list[list[int]], params: list[SamplingParams], policies: list[RoutingPolicy],
            modes: list[RoutingMode], keys: list[int]) -> list[CrossRequest]:
        """Start requests from SLM prompt ids (the same interface as the shared-tokenizer engine)."""
        decode = self.slm.blm.tokenizer.decode
        return self.add_texts([decode(p, skip_special_tokens=False) for p in prompts], params, policies, modes, keys)

    def add_texts(self, prompts: list[str], params: list[SamplingParams], policies: list[RoutingPolicy],
                  modes: list[RoutingMode], keys: list[int], prefixes: list[bytes] | None = None,
                  as_bytes: list[bool] | None = None) -> list[CrossRequest]:
        """Start requests from prompt texts (special tokens written out, as a chat template renders them).

        `prefixes`: answer text already written (e.g. a label branch): both models are conditioned
        on it as bytes and the output continues it. `as_bytes`: per request, see
        `Side.context_and_tail` (default: the engine's `prompt_as_bytes`)."""
        assert len(prompts) == len(params) == len(policies) == len(modes) == len(keys), "one of each per request"
        as_bytes = as_bytes or [self.prompt_as_bytes] * len(prompts)
        # what can fail on a request's fields comes before any sequence opens, so a fault leaves none behind
        slm_views = [self.slm.context_and_tail(p, b) for p, b in zip(prompts, as_bytes)]
        llm_views = [self.llm.context_and_tail(p, b) for p, b in zip(prompts, as_bytes)]
        generators = [make_generator(sp.seed) for sp in params]
        hidden = any(p.needs_hidden for p in policies)
        states = self.slm.blm.start([c for c, _ in slm_views], want_hidden=hidden)
        self.slm.blm.push(states, [t for _, t in slm_views], want_hidden=hidden)
        reqs = [CrossRequest(k, sp, pol, st, tail, *llm_view, mode=m,
                             out=Generation(prompt_tokens=len(ctx) + len(self.slm.blm.vocab.encode(tail)), pieces=[]),
                             generator=gen, flag_rate=self.block.init_flag_rate,
                             reject_rate=self.block.init_reject_rate)
                for sp, pol, k, st, (ctx, tail), llm_view, m, gen
                in zip(params, policies, keys, states, slm_views, llm_views, modes, generators)]
        for r, prefix in zip(reqs, prefixes or [b""] * len(reqs)):
            r.out.stats.slm_passes += 2
            r.text, r.start = bytearray(prefix), len(prefix)
            r.stops = StopScan(r.params.stop, _utf8, origin=r.start) if r.params.stop else None
        self.active += reqs
        return reqs

    def _sequential_step(self, reqs: list[CrossRequest]) -> None:
        self._sync(self.slm.blm, [r.slm for r in reqs], [(r.slm_tail, r.text, len(r.text)) for r in reqs],
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
            piece = blm.commit(state, leaf) if blm.piece(state, leaf) else b""
            self._emit(r, leaf, piece, Source.LLM if f else Source.SLM, float(score))

    def _speculative_step(self, reqs: list[CrossRequest]) -> None:
        """One drafting pass of the round in progress, and its end when no request drafts on: one LLM pass over
        every flagged prefix (`serving.decoding.rounds.round_step`, pieces drafted and judged by
        `PieceSpeculator`)."""
        round_step(self, reqs, PieceSpeculator(self))

    def _emit(self, r: CrossRequest, leaf: Leaf, piece: bytes, source: Source, score: float) -> None:
        """Record one written piece (b"": end of text); the writer's state is already advanced."""
        r.out.sources.append(source)
        r.out.scores.append(score)
        r.out.stats.llm_tokens += int(source == Source.LLM)
        r.out.token_ids.append(leaf.token)
        if not piece:
            r.done, r.out.finish_reason = True, FinishReason.STOP
            return
        _append_piece(r, piece)
        reason = self._stop_reason(r, len(r.text))
        if reason is not None:
            r.done, r.out.finish_reason = True, reason

    def _stop_reason(self, r: CrossRequest, committed: int) -> FinishReason | None:
        """Why the output so far (drafts included while drafting) must end: a stop string, max_tokens, or
        either model's context. `committed`: where the written text ends in `r.text` (the drafts' pieces follow
        it); the stop scan keeps that much and only looks at the window around the new bytes."""
        tokens = max(len(s.context) + len(s.root.ids) for s in (r.slm, r.llm) if s is not None and s.rows)
        drafted = committed < len(r.text)

        def stop_found() -> bool:
            return r.stops.found(r.text, committed, bytes(r.text[committed:]) if drafted else None,
                                 commit=not drafted)

        # + 1: the next piece is at least one more token of either model
        return stop_or_length(r.params, stop_found, len(r.out.pieces), tokens + 1, self.context_length)

    # -- internals -----------------------------------------------------------------------------
    def _sync(self, blm: ByteLevelLM, states: list[ByteState], texts: list[tuple[bytes, bytearray, int]],
              want_hidden: bool) -> None:
        """Give each state the bytes it has not seen of its text, (prompt tail, request text, end): tail +
        text[:end]; then evaluate all in one pass. Only the unseen bytes are copied."""
        chunks = [_unseen(tail, text, end, len(s.text)) for s, (tail, text, end) in zip(states, texts)]
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
        # full logits: ByteLevelLM takes only backends with the full distribution (RowKind.LOGITS rows)
        return route_rows([r.policy for r in reqs], [row.logits for row in rows], [row.hidden for row in rows],
                          [len(r.out.pieces) for r in reqs], [r.key for r in reqs], [RowKind.LOGITS] * len(reqs))

    def _llm_leaves(self, reqs: list[CrossRequest]) -> list[Leaf]:
        """The LLM's piece for each routed request: conditioned on the text, one batched pass."""
        if not reqs:
            return []
        self._open_llm(reqs)
        self._sync(self.llm.blm, [r.llm for r in reqs], [(r.llm_tail, r.text, len(r.text)) for r in reqs], False)
        for r in reqs:
            r.out.stats.llm_passes += 1
        return [self.llm.blm.pick_leaf(r.llm, r.params, r.generator) for r in reqs]

    def _open_llm(self, reqs: list[CrossRequest]) -> None:
        """Open the LLM state of requests routed to it for the first time (one batched prefill)."""
        fresh = [r for r in reqs if r.llm is None]
        for r, state in zip(fresh, self.llm.blm.start([r.llm_context for r in fresh])):
            r.llm = state
            r.out.stats.llm_passes += 1

    def _release(self, r: CrossRequest) -> None:
        for d in r.drafts:  # a request cancelled mid-round: its rollback points
            if d.snapshot is not None:
                self.slm.blm.close(d.snapshot)
        self.slm.blm.close(r.slm)
        if r.llm is not None:
            self.llm.blm.close(r.llm)
        r.out.text = cut_at_stop(_utf8(r.text[r.start:]), r.params.stop)


@dataclass
class PieceSpeculator:
    """Byte-level drafting and judging for a round (`serving.decoding.rounds.Speculator`).

    The SLM drafts pieces; at a flagged draft it assumes the LLM will write the same bytes and goes on
    conditioned on them as bytes, keeping a snapshot to roll back to. A flagged draft right after a flagged
    one is not drafted on: it is carried to open the next block (its LLM piece needs the LLM's own token path
    after the first). One LLM pass gives the LLM's leaves at every flagged prefix (a copy of the LLM state each,
    sharing its KV: `ByteLevelLM.fork_state`)."""

    engine: CrossEngine

    def draft(self, reqs: list[CrossRequest]) -> list[bool]:
        slm = self.engine.slm.blm
        fresh = [r for r in reqs if r.carry is None]
        proposed = dict(zip(map(id, fresh), self._drafts(fresh)))
        more = []
        for r in reqs:
            d, r.carry = r.carry or proposed[id(r)], None
            if d.flagged and r.drafts and r.drafts[-1].flagged:
                r.carry = d  # kept, not redrawn: dropping flagged draws would bias a sampled block
                more.append(False)
                continue
            d.text_before, d.snapshot = len(r.text), slm.fork_state(r.slm) if d.flagged else None
            r.drafts.append(d)
            if d.piece:  # b"": end of text
                if not d.flagged:  # flagged: as if the LLM wrote it, the SLM will condition on these bytes
                    slm.commit(r.slm, d.leaf)
                _append_piece(r, d.piece)
            more.append(bool(d.piece) and self.engine._stop_reason(r, r.drafts[0].text_before) is None)
        return more

    def _drafts(self, reqs: list[CrossRequest]) -> list[_Draft]:
        """Each request's next SLM piece, routed; flagged sampled drafts keep the q they were drawn from."""
        slm = self.engine.slm.blm
        self.engine._sync(slm, [r.slm for r in reqs], [(r.slm_tail, r.text, len(r.text)) for r in reqs],
                          any(r.policy.needs_hidden for r in reqs))
        tables = [slm.leaf_table(r.slm) for r in reqs]
        out = []
        for r, table in zip(reqs, tables):
            r.out.stats.slm_passes += 1
            position = len(r.out.pieces)
            probs = None if r.params.greedy else table.probs(r.params)
            k = table.draw(probs, None if probs is None else r.generator_at(position, DRAFT))
            out.append(_Draft(table.leaf(k), table.piece(k), False, 0.0, table, probs, position))
        scores, flagged = self.engine._route(reqs, [d.leaf for d in out])
        for r, d, score, f in zip(reqs, out, scores, flagged):
            d.flagged, d.score = f, float(score)
            if f and d.q is not None and len(r.slm.rows) > 1:
                d.q = d.q * _flagged_splits(r, d.table)
                d.q /= d.q.sum()
        return out

    def verify(self, reqs: list[CrossRequest]) -> PieceJudge:
        """One LLM pass over every flagged prefix; each block's text is then rewound, for the judge to write."""
        engine, llm = self.engine, self.engine.llm.blm
        jobs = [(r, d) for r in reqs for d in r.drafts if d.flagged]
        routed = list({id(r): r for r, _ in jobs}.values())
        engine._open_llm(routed)
        copies = [llm.fork_state(r.llm) for r, _ in jobs]
        fed = sum(max(1, _pieces_between(r, len(copy.text) - len(r.llm_tail), d.text_before))
                  for (r, d), copy in zip(jobs, copies))
        with engine.costs.timing("llm", fed if jobs else 0):
            engine._sync(llm, copies, [(r.llm_tail, r.text, d.text_before) for r, d in jobs], False)
            tables = [llm.leaf_table(copy) for copy in copies]
        verdicts = {id(d): (copy, _llm_verdict(table, d, r)) for (r, d), copy, table in zip(jobs, copies, tables)}
        for r in routed:
            r.out.stats.llm_passes += 1
        for r in reqs:
            if r.drafts:
                kept = len(r.out.pieces) - sum(1 for d in r.drafts if d.piece)
                del r.out.pieces[kept:], r.ends[kept:], r.text[r.drafts[0].text_before:]
        return PieceJudge(engine, verdicts)


@dataclass
class PieceJudge:
    """Commits piece blocks (`serving.decoding.rounds.Judge`) from the LLM's verdicts at their flagged drafts."""

    engine: CrossEngine
    verdicts: dict[int, tuple[ByteState, Leaf]]  # id(draft) -> (the LLM's state at its prefix, the leaf it writes)

    def keep(self, r: CrossRequest, d: _Draft) -> None:
        self.engine._emit(r, d.leaf, d.piece, Source.SLM, d.score)

    def settle(self, r: CrossRequest, d: _Draft) -> bool:
        slm, llm = self.engine.slm.blm, self.engine.llm.blm
        copy, leaf = self.verdicts[id(d)]
        llm_piece = llm.piece(copy, leaf)
        llm.close(r.llm)
        r.llm = copy
        if llm_piece:
            llm.commit(copy, leaf)
        diverged = llm_piece != d.piece
        if diverged:  # the LLM writes something else: roll the SLM back to before this draft
            slm.close(r.slm)
            r.slm = d.snapshot
            r.carry = None  # drawn after bytes that were not written
        else:
            slm.close(d.snapshot)
        self.engine._emit(r, leaf, llm_piece, Source.LLM, d.score)
        return diverged

    def drop(self, r: CrossRequest, dropped: list[_Draft]) -> None:
        """Their SLM rollback points and LLM states."""
        for d in dropped:
            if d.snapshot is not None:
                self.engine.slm.blm.close(d.snapshot)
            if d.flagged:
                self.engine.llm.blm.close(self.verdicts[id(d)][0])


def _flagged_splits(r: CrossRequest, table: LeafTable) -> torch.Tensor:
    """[n] 1.0 where the router flags the cover a leaf comes from, else 0.0."""
    splits = table.splits.unique().tolist()
    rows = [r.slm.rows[s] for s in splits]
    _, flagged = route_rows([r.policy] * len(rows), [row.logits for row in rows], [row.hidden for row in rows],
                            [len(r.out.pieces)] * len(rows), [r.key] * len(rows), [RowKind.LOGITS] * len(rows))
    keep = torch.tensor([s for s, f in zip(splits, flagged) if f], dtype=torch.long)
    return torch.isin(table.splits, keep).double()


def _llm_verdict(table: LeafTable, d: _Draft, r: CrossRequest) -> Leaf:
    """The LLM's leaf at a flagged draft: its most probable one (greedy), or the speculative test."""
    if d.q is None:
        return table.leaf(table.draw(None, None))
    gen = r.generator_at(d.position, VERIFY)
    p = table.probs(r.params)
    q_piece = float(d.q[d.table.with_piece(d.piece)].sum())
    same = table.with_piece(d.piece)
    if float(torch.rand(1, dtype=torch.float64, generator=gen)) * q_piece < float(p[same].sum()):
        return table.leaf(table.draw(p * same, gen))
    for _ in range(_MAX_RESIDUAL_DRAWS):  # norm(max(p - q, 0)) by rejection from p: entered with
        k = table.draw(p, gen)  # probability TV(p, q), 1 / TV draws
        piece = table.piece(k)
        p_piece = float(p[table.with_piece(piece)].sum())
        q_other = float(d.q[d.table.with_piece(piece)].sum())
        if float(torch.rand(1, dtype=torch.float64, generator=gen)) * p_piece < p_piece - q_other:
            return table.leaf(k)
    return table.leaf(k)  # p and q equal up to rounding: the residual is p's rounding noise


def _pieces_between(r: CrossRequest, lo: int, hi: int) -> int:
    """Pieces of `r`'s output ending after byte `lo` and by byte `hi` of its text (what an LLM state that
    holds `lo` bytes is fed to reach `hi`, in pieces: the unit the pass-cost model counts). O(log pieces)."""
    return max(0, bisect_right(r.ends, hi) - bisect_right(r.ends, lo))


def _append_piece(r: CrossRequest, piece: bytes) -> None:
    """Write `piece` after the request's text (in place: O(its length)), as an output piece."""
    r.text += piece
    r.out.pieces.append(piece)
    r.ends.append(len(r.text))


def _unseen(tail: bytes, text: bytearray, end: int, seen: int) -> bytes:
    """(tail + text[:end])[seen:], copying only those bytes."""
    if seen >= len(tail):
        return bytes(text[seen - len(tail):end])
    return tail[seen:] + bytes(text[:end])


def _utf8(data: bytes | bytearray) -> str:
    """The text of output bytes: UTF-8, U+FFFD for each invalid sequence (how the output is read everywhere)."""
    return bytes(data).decode("utf-8", errors="replace")



def generate_cross(slm: ByteLevelLM, llm: ByteLevelLM, policy: RoutingPolicy, prompts: list[str],
                   params: list[SamplingParams], handoff: Handoff = Handoff.EXACT,
                   stream_keys: list[int] | None = None, mode: RoutingMode = RoutingMode.SEQUENTIAL,
                   prompt_as_bytes: bool = False, prefixes: list[bytes] | None = None) -> list[Generation]:
    """Decode a fixed batch of prompt texts to the end (`prompt_as_bytes`: see `Side.context_and_tail`;
    `prefixes`: see `CrossEngine.add_texts`)."""
    engine = CrossEngine(slm, llm, handoff, prompt_as_bytes=prompt_as_bytes)
    keys = stream_keys if stream_keys is not None else list(range(len(prompts)))
    return drain(engine, engine.add_texts(prompts, params, [policy] * len(prompts), [mode] * len(prompts), keys,
                                          prefixes))


def decode_bytes(model: ByteLevelLM, prompts: list[str], params: list[SamplingParams],
                 prefixes: list[bytes] | None = None) -> list[Generation]:
    """One byte-level model alone, each prompt continued from an exact byte prefix (which may end inside one of
    the model's tokens): how the label pipeline's LLM writes references and continues branches when the pair's
    tokenizers differ. It is the byte-level engine with `model` on both sides and a policy that never routes, so
    it shares the engine's cover-encoding conditioning instead of a second implementation of it."""
    return generate_cross(model, model, AlwaysSLM(), prompts, params, prefixes=prefixes)
