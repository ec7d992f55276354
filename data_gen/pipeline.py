"""The label pipeline: reference -> mismatch -> continuation -> verify -> labels, per chunk of prompts.

Glossary
  reference     the LLM's greedy answer to a prompt: the path the SLM should follow.
  mismatch      a response position where the teacher-forced SLM's top token differs from
                the reference token (a candidate).
  continuation  the LLM continuing the SLM branch (prefix + SLM token) to the verifier's stop
                (`continue_with="routed"`: routed decoding continues it instead, see LabelConfig).
  divergent     a mismatch the verifier says changes the path (label 1); matches and neutral
                mismatches are label 0.

Prompts are processed in chunks; each (stage, chunk) output is one atomic shard (see
data_gen.shards), so a killed run resumes at the first missing shard with no duplicated or
lost rows.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import NamedTuple

import numpy as np

from r2r.data_gen.prompts import PromptRecord
from r2r.data_gen.shards import ShardStore
from r2r.data_gen.verifiers import SENTENCE_STOPS, Candidate, Continuation, Verdict, Verifier, VerifierKind
from r2r.router.features import topk_logprobs
from r2r.router.policies import PolicyKind, RoutingPolicy
from r2r.serving.backends.fingerprint import router_fingerprint, tokenizer_fingerprint
from r2r.serving.pair import ModelPair
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.generation import Source
from r2r.serving.decoding.routed import generate_sequential
from r2r.serving.decoding import decode

log = logging.getLogger(__name__)

STAGES = ("reference", "mismatch", "continuation", "verify", "labels")


class ContinueWith(str, Enum):
    """Who continues an SLM branch for the verifier (see LabelConfig)."""

    LLM = "llm"
    ROUTED = "routed"


@dataclass(frozen=True)
class LabelConfig:
    out_dir: Path
    verifier: VerifierKind = VerifierKind.ANSWER
    chunk_size: int = 100  # prompts per shard
    batch_size: int = 32  # sequences per model pass
    max_new_tokens: int = 256  # reference and answer-continuation length limit
    sentence_max_tokens: int = 48  # continuation limit in sentence mode
    top_k: int = 32
    keep_unfinished: bool = False  # label references that hit the length limit too (default: drop them)
    # Who continues the SLM branch. "llm" (the published method): divergent iff the LLM, taking over
    # after the SLM's token, reaches another answer. "routed": the SLM with an existing router (at
    # `continue_share`, or its stored threshold) continues it, as it does in routed decoding: a slip the
    # LLM would repair but the routed system does not is then divergent. On-policy labels for the
    # next router; the routed system's own later errors also count, so positives rise slightly.
    continue_with: ContinueWith = ContinueWith.LLM
    continue_share: float | None = None
    task: str | None = None  # the task whose grading the answer verifier follows (None: the testbed's `####`)

    def __post_init__(self) -> None:
        if min(self.chunk_size, self.batch_size, self.max_new_tokens, self.sentence_max_tokens, self.top_k) < 1:
            raise ValueError(f"label sizes must be positive: {self}")
        try:  # str enums: a label set's identity (JSON) reads the same as when these were strings
            object.__setattr__(self, "continue_with", ContinueWith(self.continue_with))
            object.__setattr__(self, "verifier", VerifierKind(self.verifier))
        except ValueError as exc:
            raise ValueError(f"continue_with must be one of {[c.value for c in ContinueWith]} and verifier one of "
                             f"{[v.value for v in VerifierKind]}: {exc}") from exc
        if self.continue_share is not None and not 0.0 <= self.continue_share <= 1.0:
            raise ValueError(f"continue_share must be in [0, 1], got {self.continue_share}")

    def settings(self) -> dict:
        """What a resumed run must match; the continuation fields only when not the default, so label
        sets made before they existed still resume."""
        default = {"continue_with": "llm", "continue_share": None, "task": None}
        return {k: v for k, v in asdict(self).items() if k != "out_dir" and default.get(k, k) != v}


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Branches(NamedTuple):
    """One candidate's two branches, as text, after the shared context."""

    context: str  # the reference's text before the candidate position
    slm: str  # the SLM's token and what was written after it
    ref: str  # the reference from the candidate position on


@dataclass(frozen=True)
class RoutedContinuation:
    """Routed decoding continues SLM branches (`continue_with="routed"`). `router` identifies the policy
    (a router checkpoint's fingerprint) in the label set's identity: another router labels other slips
    divergent, so a resumed run must use the same one."""

    policy: RoutingPolicy
    router: str


class LabelPipeline:
    """Shared-tokenizer pairs; `CrossLabelPipeline` (below) is the cross-tokenizer variant."""

    def __init__(self, pair: ModelPair, verifier: Verifier, cfg: LabelConfig, prompts: list[PromptRecord],
                 routed: RoutedContinuation | None = None) -> None:
        if (routed is not None) != (cfg.continue_with == ContinueWith.ROUTED):
            raise ValueError("a routed continuation goes with continue_with='routed' (and only with it)")
        if cfg.top_k > pair.slm.returned_top_k:
            raise ValueError(f"labels with top-{cfg.top_k} features need the SLM's backend to return at least "
                             f"{cfg.top_k} log-probs per position; it returns {pair.slm.returned_top_k}")
        self.pair, self.verifier, self.cfg, self.prompts = pair, verifier, cfg, prompts
        # who writes SLM-branch continuations: the LLM alone, or the SLM routed to the LLM
        self._routed = routed  # who writes SLM-branch continuations: the LLM alone (None) or the routed pair
        identity = {"slm": pair.slm.fingerprint, "llm": pair.llm.fingerprint,
                    "tokenizer": tokenizer_fingerprint(pair.tokenizer), "settings": cfg.settings(),
                    **({"llm_tokenizer": tokenizer_fingerprint(pair.llm_tokenizer)} if pair.cross else {}),
                    **({"continue_router": routed.router} if routed else {}),
                    "prompt_ids": [p.id for p in prompts][:3] + [len(prompts)]}
        self.store = ShardStore(cfg.out_dir, identity)
        self.greedy_llm_rule = pair.stop_rule()

    # -- stages ------------------------------------------------------------------------------
    def reference(self, chunk: list[PromptRecord]) -> dict:
        prompts = [self.pair.encode_chat(p.chat()) for p in chunk]
        gens = []
        for batch in _batches(prompts, self.cfg.batch_size):
            gens += decode(self.pair.llm, batch, [SamplingParams(max_tokens=self.cfg.max_new_tokens)] * len(batch),
                           self.greedy_llm_rule, Source.LLM)
        return {"data_id": [p.id for p in chunk], "prompt_ids": prompts, "ref_ids": [g.token_ids for g in gens],
                "finished": [g.finish_reason.value == "stop" for g in gens]}

    def mismatch(self, ref: dict) -> dict:
        """Teacher-force the SLM over prompt + reference (one pass per sequence batch)."""
        rows: dict[str, list] = {k: [] for k in ("data_id", "position", "slm_token", "ref_token", "mismatch")}
        hidden, topk = [], []
        items = [(d, p, r) for d, p, r, f in zip(ref["data_id"], ref["prompt_ids"], ref["ref_ids"], ref["finished"])
                 if f or self.cfg.keep_unfinished]
        for batch in _batches(items, self.cfg.batch_size):
            spans = [tuple(range(len(p) - 1, len(p) + len(r) - 1)) for _, p, r in batch]  # rows predicting r
            outs = self.pair.slm.open([p + r for _, p, r in batch], want_hidden=True, rows_at=spans)
            for (data_id, p, r), (seq, out) in zip(batch, outs):
                self.pair.slm.close(seq)
                logits = out.logits  # [len(r), vocab]
                pred = logits.argmax(-1).tolist()
                rows["data_id"] += [data_id] * len(r)
                rows["position"] += list(range(len(r)))
                rows["slm_token"] += pred
                rows["ref_token"] += r
                rows["mismatch"] += [a != b for a, b in zip(pred, r)]
                hidden.append(out.hidden.numpy())
                topk.append(topk_logprobs(logits, self.cfg.top_k, out.kind).numpy())
        rows["hidden"] = np.concatenate(hidden) if hidden else np.zeros((0, self.pair.slm.hidden_size), np.float32)
        rows["topk"] = np.concatenate(topk) if topk else np.zeros((0, self.cfg.top_k), np.float32)
        return rows

    def continuation(self, ref: dict, mism) -> dict:
        """The LLM (or routed decoding) continues every candidate's SLM branch; the reference branch is cut
        from the reference. In sentence mode both branches end at their first sentence stop."""
        cands = [(d, pos, tok) for d, pos, tok, m in zip(mism["data_id"], mism["position"], mism["slm_token"],
                                                         mism["mismatch"]) if m]
        sentence = self.verifier.continuation == Continuation.SENTENCE
        params = SamplingParams(max_tokens=self.cfg.sentence_max_tokens if sentence else self.cfg.max_new_tokens,
                                stop=SENTENCE_STOPS if sentence else ())
        out: dict[str, list] = {"data_id": [], "position": [], "context": [], "slm_branch": [], "ref_branch": []}
        for batch in _batches(cands, self.cfg.batch_size):
            for (d, pos, _), branch in zip(batch, self._branches(ref, batch, params)):
                out["data_id"].append(d)
                out["position"].append(pos)
                out["context"].append(branch.context)
                out["slm_branch"].append(self._cut(branch.slm, params.stop) if sentence else branch.slm)
                out["ref_branch"].append(self._cut(branch.ref, params.stop) if sentence else branch.ref)
        return out

    def _branches(self, ref: dict, batch: list[tuple], params: SamplingParams) -> list[Branches]:
        """For each candidate (data id, position, SLM token) of `batch`: the context, the SLM branch (its token
        and the continuation written after it, within `params`) and the reference from the position on."""
        refs = {d: (p, r) for d, p, r in zip(ref["data_id"], ref["prompt_ids"], ref["ref_ids"])}
        text_of_ids = self.greedy_llm_rule.decode
        prompts = [refs[d][0] + refs[d][1][:pos] + [tok] for d, pos, tok in batch]
        fitted = [replace(params, max_tokens=max(1, min(params.max_tokens, self.pair.context_length - len(p) - 1)))
                  for p in prompts]
        if self._routed is None:
            gens = decode(self.pair.llm, prompts, fitted, self.greedy_llm_rule, Source.LLM)
        else:
            gens = generate_sequential(self.pair.slm, self.pair.llm, self._routed.policy, prompts, fitted,
                                       self.greedy_llm_rule)
        # sentence mode cuts the reference's raw text; otherwise its text without EOS
        ref_text = text_of_ids if self.verifier.continuation == Continuation.SENTENCE else self.greedy_llm_rule.text_of
        return [Branches(text_of_ids(refs[d][1][:pos]), text_of_ids([tok]) + g.text, ref_text(refs[d][1][pos:]))
                for (d, pos, tok), g in zip(batch, gens)]

    @staticmethod
    def _cut(text: str, stops: tuple[str, ...]) -> str:
        """Text up to and including the first sentence stop after its first character."""
        ends = [i for s in stops if (i := text.find(s, 1)) >= 0]
        return text[: min(ends) + 1] if ends else text

    def verify(self, cont) -> dict:
        cands = [Candidate(c, s, r, d) for c, s, r, d in
                 zip(cont["context"], cont["slm_branch"], cont["ref_branch"], cont["data_id"])]
        labels: list[int] = []
        for batch in _batches(cands, self.cfg.batch_size):
            labels += self.verifier.label(batch)
        return {"data_id": list(cont["data_id"]), "position": list(cont["position"]), "divergent": labels}

    @staticmethod
    def labels(mism, ver) -> dict:
        """Every teacher-forced position: divergent (1) or not; `unverifiable` marks mismatches whose branches
        gave no gradeable answer (no label: router training leaves them out)."""
        verdict = {(d, p): y for d, p, y in zip(ver["data_id"], ver["position"], ver["divergent"])}
        rows = {k: mism[k] for k in ("data_id", "position", "slm_token", "ref_token", "mismatch", "hidden", "topk")}
        found = [verdict.get((d, p), Verdict.NEUTRAL) for d, p in zip(mism["data_id"], mism["position"])]
        rows["divergent"] = [int(v == Verdict.DIVERGENT) for v in found]
        rows["unverifiable"] = [v == Verdict.UNVERIFIABLE for v in found]
        return rows

    # -- driver ------------------------------------------------------------------------------
    def run(self, on_progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Run every missing shard; returns the counts written into the manifest."""
        from datasets import Dataset

        chunks = _batches(self.prompts, self.cfg.chunk_size)
        report = on_progress or (lambda stage, done, total: None)
        start, labeled_now = time.perf_counter(), 0
        for index, chunk in enumerate(chunks):
            data: dict = {}

            def stage(name: str, make: Callable[[], dict]) -> object:
                if self.store.has(name, index):
                    ds = self.store.load(name, index)
                else:
                    ds = Dataset.from_dict(make())
                    self.store.save(name, index, ds)
                report(name, index + 1, len(chunks))
                data[name] = ds
                return ds

            if self.store.has("labels", index):
                for name in STAGES:
                    report(name, index + 1, len(chunks))
                continue
            ref = stage("reference", lambda: self.reference(chunk))
            mism = stage("mismatch", lambda: self.mismatch(ref[:]))
            cols = ["data_id", "position", "slm_token", "mismatch"]
            cont = stage("continuation", lambda: self.continuation(ref[:], mism.select_columns(cols)[:]))
            ver = stage("verify", lambda: self.verify(cont[:]))
            stage("labels", lambda: self.labels(mism.with_format("numpy")[:], ver[:]))
            labeled_now += len(mism)
        elapsed = time.perf_counter() - start
        counts = self.counts()
        counts["last_run"] = {"tokens_labeled": labeled_now, "seconds": round(elapsed, 1),
                              "tokens_per_second": round(labeled_now / elapsed, 1) if elapsed else 0.0}
        self.store.set_counts(counts)
        return counts

    def counts(self) -> dict:
        from datasets import concatenate_datasets

        shards = [self.store.load("labels", i) for i in range(len(_batches(self.prompts, self.cfg.chunk_size)))
                  if self.store.has("labels", i)]
        shards = [s for s in shards if len(s)]
        if not shards:
            return {"tokens": 0}
        ds = concatenate_datasets(shards)
        mismatch, divergent = np.asarray(ds["mismatch"]), np.asarray(ds["divergent"])
        unverifiable = _unverifiable(ds)
        n = len(ds)
        return {"prompts_done": sum(len(set(s["data_id"])) for s in shards), "tokens": n,
                "mismatches": int(mismatch.sum()), "divergent": int(divergent.sum()),
                "unverifiable": int(unverifiable.sum()),
                "neutral": int(mismatch.sum() - divergent.sum() - unverifiable.sum()),
                "mismatch_rate": float(mismatch.mean()), "divergent_rate": float(divergent.mean()),
                "shards": [_verdict_counts(s) for s in shards]}


def _unverifiable(ds) -> np.ndarray:
    """Label sets made before unverifiable candidates were told apart have no such column: none were."""
    return _bools(ds, "unverifiable") if "unverifiable" in ds.column_names else np.zeros(len(ds), bool)


def _bools(ds, column: str) -> np.ndarray:
    """A dataset column as a bool array (a datasets Column is lazy: listed first, or numpy reads it as one object)."""
    return np.asarray(list(ds[column]), dtype=bool)


def _verdict_counts(shard) -> dict[str, int]:
    """Neutral, divergent and unverifiable candidates (mismatches) of one shard."""
    mismatch, divergent = _bools(shard, "mismatch"), _bools(shard, "divergent")
    unverifiable = _unverifiable(shard)
    return {"candidates": int(mismatch.sum()), "neutral": int((mismatch & ~divergent & ~unverifiable).sum()),
            "divergent": int(divergent.sum()), "unverifiable": int(unverifiable.sum())}


class CrossLabelPipeline(LabelPipeline):
    """Labels for a pair with different tokenizers: the same stages over bytes.

    The reference is the LLM's text; the SLM is teacher-forced over its own encoding of it, and
    a position is a mismatch when the SLM's top token's bytes are not what the reference text
    continues with (a different segmentation of the same text is not a mismatch). The LLM
    continues each SLM branch conditioned on its exact bytes (covers: serving.byte_level.probabilities), so a
    branch ending inside an LLM token is not biased."""

    def reference(self, chunk: list[PromptRecord]) -> dict:
        from r2r.serving.byte_level.cross_tokenizer import decode_bytes

        slm_blm, llm_blm = self.pair.byte_models()
        texts = [self._llm_prompt(p) for p in chunk]
        gens = []
        for batch in _batches(texts, self.cfg.batch_size):
            gens += decode_bytes(llm_blm, batch, [SamplingParams(max_tokens=self.cfg.max_new_tokens)] * len(batch))
        refs = [g.text for g in gens]
        return {"data_id": [p.id for p in chunk], "prompt_ids": [self.pair.encode_chat(p.chat()) for p in chunk],
                "ref_ids": [slm_blm.vocab.encode(r.encode()) for r in refs], "ref_text": refs,
                "finished": [g.finish_reason.value == "stop" for g in gens]}

    def mismatch(self, ref: dict) -> dict:
        rows = super().mismatch(ref)
        table = self.pair.byte_models()[0].vocab.table
        refs = {d: r for d, r in zip(ref["data_id"], ref["ref_text"])}
        offsets: dict = {}
        for k, (d, pos, tok) in enumerate(zip(rows["data_id"], rows["position"], rows["slm_token"])):
            if pos == 0:
                offsets[d] = 0
            ref_bytes = refs[d].encode()
            here = offsets[d]
            rows["mismatch"][k] = not (table[tok] and ref_bytes.startswith(table[tok], here))
            offsets[d] = here + len(table[rows["ref_token"][k]])
        return rows

    def _branches(self, ref: dict, batch: list[tuple], params: SamplingParams) -> list[Branches]:
        """As for one tokenizer, over bytes: the context is the reference's text before the SLM's token, and the
        LLM continues the branch's exact bytes (a branch may end inside one of its tokens)."""
        from r2r.serving.byte_level.cross_tokenizer import decode_bytes

        llm_blm = self.pair.byte_models()[1]
        table = self.pair.byte_models()[0].vocab.table
        refs = {d: (t, ids) for d, t, ids in zip(ref["data_id"], ref["ref_text"], ref["ref_ids"])}
        contexts = [b"".join(table[i] for i in refs[d][1][:pos]).decode("utf-8", errors="replace")
                    for d, pos, _ in batch]
        firsts = [table[tok].decode("utf-8", errors="replace") for _, _, tok in batch]
        branches = [(c + f).encode() for c, f in zip(contexts, firsts)]
        prompts = self._llm_prompts([d for d, _, _ in batch])
        gens = decode_bytes(llm_blm, prompts, [params] * len(batch), prefixes=branches)
        return [Branches(context, first + g.text, refs[d][0][len(context):])
                for (d, _, _), context, first, g in zip(batch, contexts, firsts, gens)]

    def _llm_prompt(self, record: PromptRecord) -> str:
        tok = self.pair.llm_tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(record.chat(), tokenize=False, add_generation_prompt=True)
        return self.pair.tokenizer.apply_chat_template(record.chat(), tokenize=False, add_generation_prompt=True)

    def _llm_prompts(self, data_ids: list) -> list[str]:
        by_id = {p.id: p for p in self.prompts}
        return [self._llm_prompt(by_id[d]) for d in data_ids]


def make_pipeline(pair: ModelPair, verifier: Verifier, cfg: LabelConfig, prompts: list[PromptRecord]) -> LabelPipeline:
    """The pipeline for `pair`; `continue_with="routed"` uses the pair's learned router."""
    if cfg.continue_with == ContinueWith.LLM:
        return (CrossLabelPipeline if pair.cross else LabelPipeline)(pair, verifier, cfg, prompts)
    if pair.cross:
        raise ValueError("--continue-with routed is implemented for pairs with one tokenizer only")
    policy = pair.policy(PolicyKind.LEARNED, llm_share=cfg.continue_share)
    return LabelPipeline(pair, verifier, cfg, prompts, RoutedContinuation(policy, router_fingerprint(pair.spec.router)))
