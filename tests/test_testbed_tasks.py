"""Testbed generators: determinism, disjoint splits, exact graders, snippets agree with their traces."""
from __future__ import annotations

import random

from testbed.code_tasks import generate_code, run_snippet
from testbed.math_tasks import generate_math
from testbed.problem import extract_final, grade
from testbed.splits import heldout, heldout_prompts, sample_train


def test_splits_are_deterministic_and_disjoint() -> None:
    for family in ("math", "code"):
        val, test = heldout(family, "validation", 300), heldout(family, "test", 300)
        assert [p.prompt for p in val] == [p.prompt for p in heldout(family, "validation", 300)]
        assert not {p.prompt for p in val} & {p.prompt for p in test}
    excluded = heldout_prompts(["math", "code"])
    train = sample_train(random.Random(0), 500, ["math", "code"], excluded)
    assert not {p.prompt for p in train} & excluded


def test_code_reference_matches_execution() -> None:
    rng = random.Random(5)
    for _ in range(500):
        problem = generate_code(rng)
        assert run_snippet(problem.prompt) == problem.answer, problem.prompt


def test_math_chain_of_thought_is_arithmetically_right() -> None:
    rng = random.Random(6)
    for _ in range(500):
        problem = generate_math(rng)
        for line in problem.solution.splitlines()[1:-1]:
            expr, result = line.split(": ", 1)[1].rstrip(".").split(" = ")
            a, op, b = expr.split(" ")
            ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}
            want = ops[op](int(a), int(b))
            assert int(result) == want and (op != "/" or int(a) % int(b) == 0), line
        assert extract_final(problem.solution) == problem.answer


def test_grader_is_exact() -> None:
    problem = generate_math(random.Random(1))
    assert grade(problem, problem.solution)
    assert not grade(problem, problem.solution.replace(f"#### {problem.answer}", f"#### {int(problem.answer) + 1}"))
    assert not grade(problem, "no final line")
    assert not grade(problem, f"#### {problem.answer}0")
