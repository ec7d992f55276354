"""Which LLM recovers from the SLM's mistakes on testbed code? (Diagnoses bench/cross_tokenizer.json.)

The SLM answers N held-out code problems alone; each answer is cut at its print line, either
before it (the LLM writes the print line and the value) or after `N: print(var) =` (the LLM writes
only the value, after the SLM chose the variable, which it often gets wrong). The LLM and llm-x each
continue every cut greedily; the count of correct final answers is how often each one recovers.
`slm_wrong_print_var` counts the SLM answers whose print line names another variable than the program.
The cut text is a plain token context for both models (cut at a token boundary of both tokenizers).

    .venv/bin/python -m r2r.evals.bench.experiments.takeover_recovery [N]
"""
from __future__ import annotations

import json
import sys

from r2r.testbed.problem import grade
from r2r.testbed.splits import heldout
from r2r.testbed.tokenizer import chat_text
from r2r.router.policies import AlwaysLLM, AlwaysSLM
from r2r.serving.byte_level.cross_tokenizer import Handoff, generate_cross
from r2r.serving.pair import load_pair, resolve_pair
from r2r.serving.decoding.sampling import SamplingParams


def cut(answer: str, after_print_var: bool) -> str | None:
    lines = answer.split("\n")
    at = next((i for i, line in enumerate(lines) if ": print(" in line), None)
    if at is None:
        return None
    head = "\n".join(lines[:at]) + "\n"
    return head + lines[at].split(" = ")[0] + " =" if after_print_var else head


def printed(text: str) -> str | None:
    """The variable of the first `print(...)` in a program or trace."""
    at = text.find("print(")
    return None if at < 0 else text[at + 6:text.find(")", at)]


def main(n: int) -> dict:
    pair = load_pair(resolve_pair("testbed", None, None), "cpu")
    cross = load_pair(resolve_pair("testbed-x", None, None), "cpu")
    problems = heldout("code", "test", n)
    answers = pair.generate(AlwaysSLM(), [pair.tokenizer(chat_text(p.prompt))["input_ids"] for p in problems],
                            [SamplingParams(max_tokens=200)] * n)
    result: dict = {"n": n, "slm_correct": sum(grade(p, a.text) for p, a in zip(problems, answers)),
                    "slm_wrong_print_var": sum(printed(p.prompt) != printed(a.text) for p, a in zip(problems, answers))}
    params = SamplingParams(max_tokens=40)
    for after in (False, True):
        kept = [(p, chat_text(p.prompt) + c) for p, a in zip(problems, answers)
                if (c := cut(a.text, after)) is not None]
        texts = [t for _, t in kept]
        llm = pair.generate(AlwaysLLM(), [pair.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
                            [params] * len(texts))
        llm_x = generate_cross(*cross.byte_models(), AlwaysLLM(), texts, [params] * len(texts), Handoff.EXACT)
        result["after_print_var" if after else "before_print_line"] = {
            "cuts": len(kept), "llm_correct": sum(grade(p, g.text) for (p, _), g in zip(kept, llm)),
            "llm_x_correct": sum(grade(p, g.text) for (p, _), g in zip(kept, llm_x))}
    return result


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 150), indent=2))
