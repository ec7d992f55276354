"""The r2r CLI as a user runs it: a real subprocess."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

QUESTION = "Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?"


def r2r(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", *args],
                          capture_output=True, text=True, timeout=300)


def test_generate_json(testbed_dirs) -> None:
    out = r2r("generate", "--pair", "testbed", "--policy", "random", "--rate", "0.5", "--max-tokens", "30",
              "--json", QUESTION, "Cara has 7 coins. How many coins does Cara have now?")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert set(row) >= {"text", "token_ids", "sources", "stats"}
        assert len(row["sources"]) == len(row["token_ids"]) > 0
        assert set(row["sources"]) <= {"slm", "llm"}
        assert row["stats"]["llm_tokens"] == row["sources"].count("llm")


def test_generate_pretty_output(testbed_dirs) -> None:
    """The pretty summary's counts are the generation's own: the same request as --json gives its sources."""
    args = ("generate", "--policy", "entropy", "--threshold", "0.05", "--max-tokens", "20", QUESTION)
    out, js = r2r(*args), r2r(*args, "--json")
    assert out.returncode == 0 and js.returncode == 0, out.stderr + js.stderr
    row = json.loads(js.stdout.splitlines()[0])
    llm = row["sources"].count("llm")
    assert 0 < llm < len(row["sources"]), "the threshold should route some tokens, not all"
    summary = re.search(r"(\d+) tokens, (\d+) from the LLM", out.stdout)
    assert summary, out.stdout
    assert (int(summary[1]), int(summary[2])) == (len(row["sources"]), llm)


@pytest.mark.parametrize("args,fragment", [
    (["generate", "--pair", "nope", "hi"], "unknown pair"),
    (["generate", "--slm", "/nonexistent", "--llm", "/nonexistent", "hi"], "not found"),
    (["generate", "   "], "empty"),
    (["generate", "--max-tokens", "100000", "hi"], "context"),
    (["generate", "--policy", "random", "hi"], "rate"),
    (["bench", "router-budget", "--family", "code", "--budgets", "0.1,lots"], "--budgets"),
    (["bench", "router-budget", "--family", "code", "--search", "up-to-plateau"], "--plateau goes with"),
    (["bench", "router-budget", "--family", "code", "--plateau", "/nonexistent.json"], "--plateau goes with"),
    (["bench", "router-budget", "--family", "code", "--search", "up-to-plateau", "--plateau", "/nonexistent.json"],
     "no such file"),
    (["testbed", "eval", "--n", "0"], "at least one problem"),  # used to loop forever
    (["testbed", "eval", "--models", "llm,llm-y"], "no testbed model 'llm-y'"),
    (["testbed", "eval", "--models", "llm,"], "no testbed model ''"),
    (["bench", "cross-tokenizer", "--n", "0"], "must be positive"),  # used to divide by zero after an hour
    (["bench", "cross-tokenizer", "--shares", "0.2,most"], "--shares"),
    (["testbed", "train", "--size", "slm", "--steps", "0", "--out", "/nonexistent/m"], "must be positive"),
    (["serve", "--threads", "0"], "--threads must be at least 1"),
    (["serve", "--wide-pass-gflop", "-1"], "--wide-pass-gflop must be non-negative"),
    (["label", "--prompts", "hf:someone/other", "--task", "gsm8k", "--out", "/nonexistent/l"],
     "reads the rows of openai/gsm8k"),  # used to label gsm8k's rows instead, silently
    (["label", "--prompts", "hf:openai/humaneval", "--task", "humaneval", "--out", "/nonexistent/l"],
     "does not read hub rows"),
])
def test_bad_input_is_one_line_exit_2(testbed_dirs, args: list[str], fragment: str) -> None:
    out = r2r(*args)
    assert out.returncode == 2, out.stderr
    assert fragment in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
