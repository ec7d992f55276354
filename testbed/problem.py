"""A generated problem and the `#### <answer>` convention both testbed families share."""
from __future__ import annotations

import re
from dataclasses import dataclass

FINAL_MARK = "####"
_FINAL_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    """One task instance: the user prompt, the worked reference solution and its final answer."""

    family: str
    prompt: str
    solution: str  # worked chain of thought ending with "#### <answer>"
    answer: str


def extract_final(completion: str) -> str | None:
    """The text after the last `#### ` of a completion (a model may restate its answer: the last one counts,
    as GSM8K-style graders read it), or None when there is none. The one `####` reader: the testbed grader,
    the math graders of `evals` and the label pipeline's answer verifier all use it."""
    matches = _FINAL_RE.findall(completion)
    return matches[-1] if matches else None


def grade(problem: Problem, completion: str) -> bool:
    """Exact match of the completion's final answer with the reference answer."""
    final = extract_final(completion)
    return final is not None and final == problem.answer
