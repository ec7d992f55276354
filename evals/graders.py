"""Graders: math answers (math-verify; boxed and `####` forms), multiple choice, code by tests in the sandbox."""
from __future__ import annotations

import re
from dataclasses import dataclass

from r2r.evals.sandbox import SandboxLimits, run_python
from r2r.testbed.problem import extract_final

_UNITS_RE = re.compile(r"(\s*[A-Za-z][A-Za-z.]*)+$")
# "Answer: C", "the answer is (c)": a capital letter standing alone, or any case in parentheses ("the answer is
# derived" and "the answer is a function" name no choice)
_CHOICE_RE = re.compile(r"(?i:\banswer(?:\s+is)?)\s*[:：]?\s*(?:\(([A-Ja-j])\)|([A-J])\b)")


def final_math_answer(completion: str) -> str:
    """The part of a completion to grade: the `#### x` line if any, else the whole text (boxed answers
    are found by math-verify itself)."""
    final = extract_final(completion)
    if final is None or "\\boxed" in completion:
        return completion
    answer = final.strip().lstrip("$").rstrip(".")
    answer = _UNITS_RE.sub("", answer) or answer  # "15 dollars" -> "15"
    return f"${answer}$"


def grade_math(completion: str, reference: str) -> bool:
    """math-verify equivalence of the completion's final answer and the reference (fractions, LaTeX,
    units and other forms normalised by math-verify)."""
    from math_verify import parse, verify

    gold = parse(reference if reference.startswith("$") or "\\boxed" in reference else f"${reference}$")
    answer = parse(final_math_answer(completion))
    return bool(gold) and bool(answer) and bool(verify(gold, answer))


def choice_letter(completion: str) -> str | None:
    """The letter of the last `Answer: X` in a completion, upper-cased, or None."""
    found = [m.group(1) or m.group(2) for m in _CHOICE_RE.finditer(completion)]
    return found[-1].upper() if found else None


def grade_choice(completion: str, reference: str) -> bool:
    """`Answer: X` (last occurrence) against the reference letter."""
    return choice_letter(completion) == reference.strip().upper()


@dataclass(frozen=True)
class CodeTests:
    """Either a test program that raises on failure (HumanEval style) or stdin/stdout cases."""

    program_suffix: str = ""  # appended after the solution, e.g. the test function and its call
    io_cases: tuple[tuple[str, str], ...] = ()


def extract_code(completion: str) -> str:
    """The last fenced code block of a completion, or the completion itself."""
    blocks = re.findall(r"```(?:python|py)?\n(.*?)```", completion, re.DOTALL)
    return blocks[-1] if blocks else completion


def grade_code(solution: str, tests: CodeTests, limits: SandboxLimits | None = None) -> bool:
    """Run the solution against its tests in the sandbox; any failure, crash or timeout fails."""
    if tests.program_suffix:
        return run_python(solution + "\n" + tests.program_suffix, limits=limits).passed
    for stdin, expected in tests.io_cases:
        result = run_python(solution, stdin=stdin, limits=limits)
        if not result.passed or result.stdout.strip() != expected.strip():
            return False
    return bool(tests.io_cases)
