"""Testbed generators: determinism, disjoint splits, exact graders, snippets agree with their traces."""
from __future__ import annotations

import random
import re

from r2r.testbed.code_tasks import generate_code, run_snippet
from r2r.testbed.math_tasks import generate_math
from r2r.testbed.problem import extract_final, grade
from r2r.testbed.splits import heldout, heldout_prompts, sample_train


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
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}
    rng = random.Random(6)
    for _ in range(500):
        problem = generate_math(rng, rng)
        equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", problem.solution)
        assert len(equations) >= 2, problem.solution  # 2-4 steps, each with its equation
        for a, op, b, result in equations:
            assert int(result) == ops[op](int(a), int(b)) and (op != "/" or int(a) % int(b) == 0), problem.solution
        assert extract_final(problem.solution) == problem.answer


def test_code_trace_substitutions_are_arithmetically_right() -> None:
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    rng, checked = random.Random(7), 0
    for _ in range(500):
        problem = generate_code(rng, rng)
        # the last stage of each assignment: the substituted values and their result, then the state
        stages = re.findall(r"(-?\d+) ([-+*]) (-?\d+) (?:=|->) (-?\d+)(?: \||,)", problem.solution)
        for a, op, b, result in stages:
            assert int(result) == ops[op](int(a), int(b)), problem.solution
        checked += len(stages)
        assert extract_final(problem.solution) == problem.answer
    assert checked >= 500, f"only {checked} substitutions found: the pattern no longer reads the traces"


def test_wording_varies_while_the_content_stays() -> None:
    """The same problem drawn with different wording generators: one prompt and answer, several solutions, every
    one graded right; without a wording generator the solution is a function of the prompt."""
    for generate in (generate_math, generate_code):
        problems = [generate(random.Random(11), random.Random(seed)) for seed in range(40)]
        assert len({p.prompt for p in problems}) == 1 and len({p.answer for p in problems}) == 1
        assert len({p.solution for p in problems}) >= 10, f"{generate.__name__}: too little freedom"
        assert all(grade(p, p.solution) for p in problems)
        assert generate(random.Random(11), None).solution == generate(random.Random(11), None).solution


def test_grader_is_exact() -> None:
    problem = generate_math(random.Random(1))
    assert grade(problem, problem.solution)
    assert not grade(problem, problem.solution.replace(f"#### {problem.answer}", f"#### {int(problem.answer) + 1}"))
    assert not grade(problem, "no final line")
    assert not grade(problem, f"#### {problem.answer}0")
