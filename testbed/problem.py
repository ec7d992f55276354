"""A generated problem and the `#### <answer>` convention both testbed families share."""
from __future__ import annotations

import re
from dataclasses import dataclass

FINAL_MARK = "####"
_FINAL_RE = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    """One task instance: the user prompt, the worked reference solution and its final answer."""

    family: str
    prompt: str
    solution: str  # worked chain of thought ending with "#### <answer>"
    answer: str


def extract_final(completion: str) -> str | None:
    """The text after the first `#### ` line of a completion, or None when there is none."""
    match = _FINAL_RE.search(completion)
    return match.group(1) if match else None


def grade(problem: Problem, completion: str) -> bool:
    """Exact match of the completion's final answer with the reference answer."""
    final = extract_final(completion)
    return final is not None and final == problem.answer
