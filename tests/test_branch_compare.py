"""The answer verifier grades like the task: hand-written branch pairs of R1-style math, GPQA-style choices and
HumanEval code, each with the verdict the task's grader implies."""
from __future__ import annotations

import pytest

from r2r.data_gen.verifiers import AnswerVerifier, Candidate, Verdict
from r2r.evals.branch_compare import comparer_for, math_answer
from r2r.evals.graders import CodeTests
from r2r.evals.tasks import EvalProblem, get_task

THINK = "<think>\nLet me add 7 and 5. 7 + 5 = 12.\n</think>\n"


@pytest.mark.parametrize("ref, slm, verdict", [
    (THINK + "The total is \\boxed{12}.", THINK + "So we get \\boxed{12.0}", Verdict.NEUTRAL),
    (THINK + "The total is \\boxed{12}.", THINK + "The total is \\boxed{13}.", Verdict.DIVERGENT),
    ("so \\boxed{\\frac{1}{2}}", "#### 0.5", Verdict.NEUTRAL),
    ("so \\boxed{\\frac{1}{2}}", "The answer is 0.5.", Verdict.NEUTRAL),
    ("The answer is 7.", "the answer is 8.", Verdict.DIVERGENT),
    ("Half of 14 is", "We first compute", Verdict.UNVERIFIABLE),  # both unfinished
    ("so \\boxed{4", "so \\boxed{5", Verdict.UNVERIFIABLE),  # unclosed boxes: unfinished
    ("\\boxed{4}", "still thinking", Verdict.DIVERGENT),
])
def test_math_branches(ref: str, slm: str, verdict: Verdict) -> None:
    assert comparer_for(get_task("gsm8k"), [])("p", ref, slm) == verdict


def test_choice_branches() -> None:
    compare = comparer_for(get_task("gpqa-diamond"), [])
    assert compare("q", "... so it is C.\nAnswer: C", "Answer: D") == Verdict.DIVERGENT
    assert compare("q", "Answer: (B)", "I think the answer is B") == Verdict.NEUTRAL
    assert compare("q", "Let me think about", "Considering the options") == Verdict.UNVERIFIABLE
    # words after "the answer is" are not choices: only the final line's letter is read
    assert compare("q", "The answer is derived below.\nAnswer: C", "Answer: C") == Verdict.NEUTRAL
    assert compare("q", "the answer is a function of x", "the answer is derived from B") == Verdict.UNVERIFIABLE


def test_code_branches_run_against_the_tests() -> None:
    problem = EvalProblem("HumanEval/0", "add", tests=CodeTests(program_suffix="assert add(2, 3) == 5"),
                          code_prefix="def add(a, b):\n", entry_point="add")
    compare = comparer_for(get_task("humaneval"), [problem])
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    assert compare("HumanEval/0", good, bad) == Verdict.DIVERGENT
    assert compare("HumanEval/0", good, good.replace("a + b", "b + a")) == Verdict.NEUTRAL
    assert compare("HumanEval/0", "def add(a, b):\n    # let me", "first I") == Verdict.UNVERIFIABLE
    assert compare("HumanEval/0", bad, "no code yet") == Verdict.NEUTRAL, "both fail"


def test_verifier_uses_the_comparer_on_context_plus_branch() -> None:
    verifier = AnswerVerifier(comparer_for(get_task("gsm8k"), []), task="gsm8k")
    cands = [Candidate("We get \\boxed{", "12}", "13}", "p0"), Candidate("Thinking", " more", " still", "p1")]
    assert verifier.label(cands) == [Verdict.DIVERGENT, Verdict.UNVERIFIABLE]
    assert math_answer("#### 15 dollars") == "$15$"
