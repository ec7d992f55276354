"""Graders on known right and wrong answers."""
from __future__ import annotations

import pytest

from r2r.evals.graders import CodeTests, final_math_answer, grade_choice, grade_code, grade_math


@pytest.mark.parametrize("completion,reference,ok", [
    ("so the total is 42.\n#### 42", "42", True),
    ("#### 41", "42", False),
    ("The answer is $\\boxed{\\frac{1}{2}}$", "0.5", True),
    ("The answer is $\\boxed{\\frac{1}{3}}$", "0.5", False),
    ("#### 3/4", "\\frac{3}{4}", True),
    ("Thus $\\boxed{2\\sqrt{2}}$.", "\\sqrt{8}", True),
    ("#### 15 dollars", "15", True),
    ("#### 1,000", "1000", True),
    ("no answer here", "7", False),
])
def test_math_grader(completion: str, reference: str, ok: bool) -> None:
    assert grade_math(completion, reference) is ok


@pytest.mark.parametrize("completion,ok", [("reasoning...\nAnswer: C", True), ("Answer: (c)", True),
                                           ("Answer: B", False), ("I think C", False),
                                           ("Answer: C\nthe answer is derived above", True),
                                           ("Answer: (C)... the answer is a Cat", True)])
def test_choice_grader(completion: str, ok: bool) -> None:
    assert grade_choice(completion, "C") is ok


def test_code_grader_program_and_io_cases() -> None:
    tests = CodeTests(program_suffix="assert add(2, 3) == 5")
    assert grade_code("def add(a, b):\n    return a + b", tests)
    assert not grade_code("def add(a, b):\n    return a - b", tests)
    assert not grade_code("", tests)
    io = CodeTests(io_cases=(("3 4\n", "7"), ("1 1\n", "2")))
    assert grade_code("a, b = map(int, input().split())\nprint(a + b)", io)
    assert not grade_code("print(7)", io)


def test_one_final_answer_reader_takes_the_last_mark() -> None:
    """The testbed grader, the math grader and the answer verifier read `####` the same way: the last one."""
    from r2r.testbed.problem import Problem, extract_final, grade

    text = "First try: #### 12\nNo wait.\n#### 13"
    assert extract_final(text) == "13"
    assert grade(Problem("math", "q", "s", "13"), text) and not grade(Problem("math", "q", "s", "12"), text)
    assert final_math_answer(text) == "$13$"
    assert extract_final("no mark here") is None
