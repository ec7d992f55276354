"""Branch comparison for the label pipeline's answer verifier, by the task's own grading.

A candidate's two branches (the reference's, and the SLM's token continued) are compared the way the task
grades a completion: math by the math-verify equivalence of their final answers (boxed, `####`, "the answer
is"), multiple choice by the letter, code by running both programs against the problem's tests (divergent iff
one passes and the other fails; a branch with no program fails), the testbed by its `####` rule. Two branches
with no gradeable answer (unfinished, none found) are `UNVERIFIABLE`; one without is divergent from one with.
`r2r label --task NAME` hands `comparer_for(task, problems)` to `data_gen`'s AnswerVerifier (data_gen never
imports evals).
"""
from __future__ import annotations

import re

from r2r.data_gen.verifiers import BranchComparer, Verdict, compare_final_marks
from r2r.evals.graders import choice_letter, final_math_answer
from r2r.evals.tasks import EvalProblem, Task, TaskKind
from r2r.testbed.problem import extract_final

# the stated answer runs to the end of its sentence: a period before a space or the end ("0.5." is 0.5), a newline
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.(?=\s|$)|\n|$)", re.IGNORECASE)
_FENCED = re.compile(r"```(?:python|py)?\n(.*?)```", re.DOTALL)


def _last_boxed(text: str) -> str | None:
    """The last `\\boxed{...}` with balanced braces, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start : j + 1]
    return None  # unclosed: an unfinished answer


def math_answer(text: str) -> str | None:
    """A branch's final math answer as math-verify input, or None when it states none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return f"${boxed}$"
    if extract_final(text) is not None:
        return final_math_answer(text)
    stated = _ANSWER_IS.findall(text)
    return f"${stated[-1].strip()}$" if stated else None


def _verdict(a, b, same) -> Verdict:
    if a is None and b is None:
        return Verdict.UNVERIFIABLE
    if a is None or b is None:
        return Verdict.DIVERGENT
    return Verdict.NEUTRAL if same(a, b) else Verdict.DIVERGENT


def _math_same(a: str, b: str) -> bool:
    from math_verify import parse, verify

    pa, pb = parse(a), parse(b)
    return bool(pa) and bool(pb) and bool(verify(pa, pb))


def comparer_for(task: Task, problems: list[EvalProblem]) -> BranchComparer:
    """The branch comparer of `task`; code tasks look their problems' tests up by data_id (`problems`' ids)."""
    if task.kind == TaskKind.TESTBED:
        return compare_final_marks
    if task.kind == TaskKind.MATH:
        return lambda data_id, ref, slm: _verdict(math_answer(ref), math_answer(slm), _math_same)
    if task.kind == TaskKind.CHOICE:
        return lambda data_id, ref, slm: _verdict(choice_letter(ref), choice_letter(slm), str.__eq__)
    by_id = {p.id: p for p in problems}

    def code(data_id: str, ref: str, slm: str) -> Verdict:
        if data_id not in by_id:
            raise ValueError(f"no problem {data_id!r} in task {task.name}: label prompts loaded with --task")
        problem = by_id[data_id]
        programs = [bool(_FENCED.search(t)) for t in (ref, slm)]
        if not any(programs):
            return Verdict.UNVERIFIABLE
        ref_ok, slm_ok = (has and task.grade(problem, t) for has, t in zip(programs, (ref, slm)))  # none: fails
        return Verdict.NEUTRAL if ref_ok == slm_ok else Verdict.DIVERGENT

    return code
