"""Prompt sources for labeling: the testbed generators, a JSONL file, or an HF dataset.

  testbed-math:2000     2000 training-split problems of a testbed family (never held-out ones)
  path/to/file.jsonl    one object per line with "prompt" (text) or "messages" (chat turns)
  hf:<name>[:<split>]   an HF dataset through `datasets` (needs a reachable hub or a local cache);
                        the prompt is read from a "prompt", "question" or "problem" field
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_FIELDS = ("prompt", "question", "problem")


@dataclass(frozen=True)
class PromptRecord:
    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content) chat turns

    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


def _user(text: str) -> tuple[tuple[str, str], ...]:
    return (("user", text),)


def load_prompts(source: str) -> list[PromptRecord]:
    """Parse a prompt source spec (see module docstring)."""
    if source.startswith("testbed-"):
        return _testbed(source)
    if source.startswith("hf:"):
        return _hf(source[3:])
    return _jsonl(Path(source))


def _testbed(source: str) -> list[PromptRecord]:
    from r2r.testbed.splits import FAMILIES, heldout_prompts, sample_train

    family, _, count = source[len("testbed-"):].partition(":")
    if family not in FAMILIES:
        raise ValueError(f"unknown testbed family {family!r} in {source!r}; known: {', '.join(FAMILIES)}")
    try:
        n = int(count) if count else 1000
    except ValueError as exc:
        raise ValueError(f"bad prompt count in {source!r}: expected testbed-<family>:<n>") from exc
    if n < 1:
        raise ValueError(f"prompt count must be positive in {source!r}")
    problems = sample_train(random.Random(f"labels-{family}"), n, [family], heldout_prompts([family]))
    return [PromptRecord(f"{family}-{i}", _user(p.prompt)) for i, p in enumerate(problems)]


def _jsonl(path: Path) -> list[PromptRecord]:
    if not path.exists():
        raise FileNotFoundError(f"prompts file not found: {path}")
    records: list[PromptRecord] = []
    bad: list[int] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if "messages" in obj:
                    turns = tuple((str(m["role"]), str(m["content"])) for m in obj["messages"])
                    if not turns:
                        raise ValueError("empty messages")
                else:
                    text = next(obj[k] for k in TEXT_FIELDS if k in obj)
                    if not isinstance(text, str) or not text.strip():
                        raise ValueError("empty prompt")
                    turns = _user(text)
            except (json.JSONDecodeError, StopIteration, ValueError, KeyError, TypeError, AttributeError):
                bad.append(lineno)
                continue
            records.append(PromptRecord(str(obj.get("id", f"{path.stem}-{lineno}")), turns))
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        log.warning("%s: skipped %d bad line(s): %s", path, len(bad), shown)
    if not records:
        raise ValueError(f"{path} holds no usable prompts ({len(bad)} bad lines)")
    return records


def _hf(spec: str) -> list[PromptRecord]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # datasets raises many types for an unreachable hub; all mean "cannot load"
        raise ValueError(f"cannot load HF dataset {name!r} ({type(exc).__name__}); give a local JSONL file instead") from exc
    field = next((f for f in TEXT_FIELDS if f in ds.column_names), None)
    if field is None:
        raise ValueError(f"HF dataset {name!r} has none of the fields {TEXT_FIELDS}")
    return [PromptRecord(f"{name}-{i}", _user(row[field])) for i, row in enumerate(ds)]
