"""Incremental text for streaming: each chunk costs O(its new tokens), and deltas never need taking back.

A detokenizer turns the steps of an output (token ids, or the bytes a byte-level step wrote) into text as
they arrive, decoding only a short window: the text a token adds can depend on its neighbours (a character
whose bytes span tokens, a tokenizer's space handling), so an incomplete character is held until the tokens
that complete it arrive. `TextStream` then holds back a possible start of a stop string and never sends
anything from the first stop string on.
"""
from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable

MAX_CHAR_TOKENS = 4  # a UTF-8 character spans at most 4 bytes, so at most 4 tokens of byte-level BPE


class TokenDetokenizer:
    """The text of a growing list of token ids, each push decoding the tokens since the last complete text
    and the few before them (vLLM's and TGI's incremental detokenization)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # the window's start: tokens decoded as context only
        self.read = 0  # tokens whose text has been returned

    def push(self, ids: Iterable[int]) -> str:
        """The text that `ids` (appended to the output) complete, up to the last whole character; "" while the
        new tokens hold only part of one."""
        self.ids.extend(ids)
        before = self.decode(self.ids[self.prefix:self.read])
        for end in range(len(self.ids), max(self.read, len(self.ids) - MAX_CHAR_TOKENS), -1):
            text = self.decode(self.ids[self.prefix:end])  # usually the first try: every new token
            if not text.endswith("\ufffd"):
                break
        else:  # no whole character ends in the last few tokens
            if len(self.ids) - self.read < MAX_CHAR_TOKENS:
                return ""  # one is incomplete: wait for the tokens that complete it
            end, text = len(self.ids), self.decode(self.ids[self.prefix:])  # invalid bytes: U+FFFD is their text
        if len(text) <= len(before):
            return ""
        self.prefix, self.read = self.read, end
        return text[len(before):]


class ByteDetokenizer:
    """The text of byte-level output pieces: an incremental UTF-8 decoder (an incomplete character is held)."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, pieces: Iterable[bytes]) -> str:
        return "".join(self.decoder.decode(p) for p in pieces)


def token_texts(detokenizer: TokenDetokenizer | ByteDetokenizer, steps: Iterable) -> list[str]:
    """The text each step adds, pushed one at a time (a character spanning steps goes to the one completing it)."""
    return [detokenizer.push([s]) for s in steps]


class TextStream:
    """Deltas of an output's text that never need taking back."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.hold = max((len(s) - 1 for s in stop), default=0)
        self.pending = ""  # decoded, not sent: a possible start of a stop string
        self.sent: list[str] = []
        self.stopped = False

    def push(self, text: str) -> str:
        """What of the newly decoded `text` can be sent now. Only `pending` can hold the start of a stop string:
        any suffix of the sent text that began one was held back."""
        if self.stopped:
            return ""
        self.pending += text
        cuts = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if cuts:
            out, self.pending, self.stopped = self.pending[:min(cuts)], "", True
        else:
            keep = next((k for k in range(min(self.hold, len(self.pending)), 0, -1)
                         if any(s.startswith(self.pending[-k:]) for s in self.stop)), 0)
            cut = len(self.pending) - keep
            out, self.pending = self.pending[:cut], self.pending[cut:]
        self.sent.append(out)
        return out

    def finish(self, text: str) -> str:
        """The rest of the output, given its whole text (the engine's, cut at the stop string): what follows what
        was sent. O(length) once per stream."""
        sent = "".join(self.sent)
        self.stopped, self.pending = True, ""
        if not text.startswith(sent):
            return ""
        self.sent.append(text[len(sent):])
        return self.sent[-1]
