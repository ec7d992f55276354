"""Incremental text for streaming: deltas that never need taking back.

A delta is held back while the decoded tail may still change: an incomplete UTF-8
character (decoded as U+FFFD) or a prefix of a stop string that more tokens could complete.
"""
from __future__ import annotations

from collections.abc import Callable

from serving.decoding.stopping import cut_at_stop


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...], eos_ids: frozenset[int]) -> None:
        self.decode, self.stop, self.eos_ids = decode, stop, eos_ids
        self.sent = ""

    def _text(self, ids: list[int]) -> str:
        ids = [i for i in ids if i not in self.eos_ids]
        return cut_at_stop(self.decode(ids), self.stop)

    def delta(self, ids: list[int], final: bool) -> str:
        text = self._text(ids)
        if not final:
            text = text.rstrip("\ufffd")
            hold = max((len(s) - 1 for s in self.stop), default=0)
            if hold:
                for k in range(min(hold, len(text)), 0, -1):
                    if any(s.startswith(text[-k:]) for s in self.stop):
                        text = text[:-k]
                        break
        out = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += out
        return out


def token_texts(decode: Callable[[list[int]], str], ids: list[int], start: int) -> list[str]:
    """The text each of ids[start:] adds (decoding growing prefixes: a character may span tokens)."""
    prev = decode(ids[:start])
    out = []
    for i in range(start, len(ids)):
        cur = decode(ids[: i + 1])
        out.append(cur[len(prev):] if cur.startswith(prev) else cur)
        prev = cur
    return out
