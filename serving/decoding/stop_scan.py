"""Stop strings found incrementally: each check decodes a short window of the newest tokens (or bytes), never
the whole output, and gives exactly the answer of searching the whole decoded output.

Why a window is needed at all. A token's text depends on its neighbours: a UTF-8 character whose bytes span
tokens decodes to U+FFFD until its last byte arrives, a SentencePiece window strips its first token's space,
`clean_up_tokenization_spaces` rewrites " ." once the "." arrives. So the text of the new tokens alone is not
what they add to the output, and "what they add" can even replace the last few characters of the text before.

How it stays exact. The scan keeps, for the committed output ids[:t]:
  w      a window start a few tokens back (`context` to 2 * `context`), at a clean split (below);
  wtext  decode(ids[w:t]), the window's text;
  tail   the last characters of the whole output's text, full(t) = decode(ids[:t]).
A check of ids[:t'] (t' > t, the new tokens and any drafts after them) decodes cur = decode(ids[w:t']). Where
cur and wtext first differ is where the output's text changed: full(t') = full(t)[:-changed] + cur[k:], k their
common prefix, changed = len(wtext) - k (usually 0: the new text only appends). Every earlier check found no stop
string in the text it saw, so a stop string in full(t') must overlap the changed part: searching the last
(longest stop - 1) kept characters plus cur[k:] finds exactly what searching full(t') would.

The one assumption (locality): decoding ids[w:] differs from the end of decoding ids[:] only in a fixed prefix,
i.e. no later token changes the text of tokens more than `context` tokens back. Byte-level BPE (GPT-2, Qwen,
R1-Distill-Qwen, the testbed) decodes the concatenated bytes with U+FFFD for invalid ones, which a later byte
changes at most 3 bytes back; the byte-level engine's text is bytes decoded the same way. SentencePiece with byte
fallback (Llama 2, Gemma) holds while a run of byte tokens is valid UTF-8 or shorter than `context`. The window
only slides to a split where the text of the tokens before it and after it join into the window's text (not
inside a character); where no such split comes up the window grows (exact, slower). Cost per check: one decode
of the window plus drafts; a slide adds two decodes of `context` tokens, once per `context` commits.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONTEXT = 8  # tokens (bytes) the window keeps before the newest ones; it slides when twice that
SLACK = 16  # characters kept in the tail beyond what a change can reach


class StopScan:
    """Whether any of `stop` occurs in the decoded output, checked as the output grows (`found`).

    `seq[origin:]` is the output: a list of token ids decoded by `decode`, or a bytearray (the byte-level engine,
    `decode` UTF-8 with replacement). Commits only append; a check may add tentative `extra` (drafts) after them."""

    def __init__(self, stop: tuple[str, ...], decode: Callable[[Any], str], origin: int = 0,
                 context: int = CONTEXT) -> None:
        assert stop and all(stop), f"stop strings must be non-empty: {stop!r}"
        assert context >= 1, f"the window keeps at least one token of context, not {context}"
        self.stop, self.decode, self.origin, self.context = stop, decode, origin, context
        self.hold = max(map(len, stop)) - 1  # characters before the change a stop string can start in
        self.t = 0  # output units committed
        self.w = 0  # the window's start (output units)
        self.wtext = ""  # decode of the window: output[w:t]
        self.tail = ""  # the last characters of the committed output's text
        self.chars = 0  # the committed output's text length

    def found(self, seq: Any, end: int, extra: Any = None, *, commit: bool) -> bool:
        """Whether a stop string occurs in the text of seq[origin:end] (+ `extra`), reading only the window.

        seq[origin:origin + t] must be what the last commit saw (t its length) and end >= origin + t. `commit`:
        the output is now seq[origin:end] (`extra` must be None); otherwise nothing is kept (a draft's check)."""
        t = end - self.origin
        assert t >= self.t, f"the output shrank below what was committed: {t} < {self.t}"
        assert not (commit and extra), "drafts are checked, not committed"
        window = seq[self.origin + self.w:end]
        cur = self.decode(window if extra is None else window + extra)
        k = _common_prefix(self.wtext, cur)
        kept = len(self.tail) - (len(self.wtext) - k)  # tail characters before the change
        if kept < 0 or (kept < self.hold and len(self.tail) < self.chars):
            return self._decode_all(seq, end, extra, commit)  # the change reaches past the tail: not expected
        new = cur[k:]
        hit = any(s in self.tail[max(0, kept - self.hold):kept] + new for s in self.stop)
        if commit:
            self.t, self.chars = t, self.chars - (len(self.tail) - kept) + len(new)
            self.tail, self.wtext = self.tail[:kept] + new, cur
            self._slide(seq, end)
        return hit

    def _decode_all(self, seq: Any, end: int, extra: Any, commit: bool) -> bool:
        """The full-decode check, and (`commit`) the window restarted from the output's start: O(output), for a
        decoder that breaks the locality assumption in a way the window can see."""
        whole = seq[self.origin:end]
        text = self.decode(whole if extra is None else whole + extra)
        if commit:
            self.t, self.w, self.wtext, self.tail, self.chars = end - self.origin, 0, text, text, len(text)
            self._slide(seq, end)
        return any(s in text for s in self.stop)

    def _slide(self, seq: Any, end: int) -> None:
        """Move the window's start to `context` units back when it holds twice that, if that split is clean: the
        window's text is the text before the split, then (SentencePiece: a space the split strips) the text after
        it. Inside a UTF-8 character the two halves decode to more characters than the whole (each half's bytes
        are U+FFFD), so such a split is refused. Then trim the tail to what a later change can reach."""
        if self.t - self.w >= 2 * self.context:
            start = self.t - self.context
            head = self.decode(seq[self.origin + self.w:self.origin + start])
            rest = self.decode(seq[self.origin + start:end])
            if (len(head) + len(rest) <= len(self.wtext) and self.wtext.startswith(head)
                    and self.wtext.endswith(rest)):
                self.w, self.wtext = start, rest
        self.tail = self.tail[-(self.hold + len(self.wtext) + SLACK):]


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two short strings."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])
