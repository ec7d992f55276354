"""A tokenizer's vocabulary as bytes, and which token sequences are canonical.

Byte-level conditioning needs three facts per tokenizer that `tokenizer.decode` cannot give
reliably (it cleans spaces, drops specials and emits U+FFFD for partial UTF-8): the exact bytes
of every token id, the canonical encoding of a byte string, and which next tokens keep a
canonical sequence canonical. Two vocabulary kinds are read: GPT-2 style byte-level BPE
(token strings in the bytes<->unicode alphabet) and SentencePiece style (U+2581 for a space,
`<0xNN>` byte-fallback pieces).

Canonical means encode(decode(t)) == t. For BPE with pretokenizer splits, validity is prefix
closed and pairwise: t + [v] is canonical iff t is and the pair (t[-1], v) is, so one boolean
row per left token (computed by encoding every pair once, memoized) decides every step. The
memo holds the most recently used rows within a byte budget: at a 262k vocabulary a row pair
is 512 KiB, and a long-lived server meets most of the vocabulary as left tokens.
"""
from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

import torch

END = 256  # the byte-distribution index of end of text (EOS or any other special token)
VALID_ROWS_BYTES = 64 << 20  # the canonical-pair memo's budget (two [vocab] bool rows per left token)
_SPIECE_SPACE = "\u2581"


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode table (transformers 5 no longer ships it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(tokenizer) -> bool:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return "ByteLevel" in json.dumps(spec.get("decoder")) or "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))


def _is_text(data: bytes) -> bool:
    """Whether `data` is UTF-8 text (what the text tokenizer can encode as it is)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _piece_bytes(piece: str, byte_level: bool, table: dict[str, int]) -> bytes:
    if byte_level:
        return bytes(table[c] for c in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace(_SPIECE_SPACE, " ").encode("utf-8")


@dataclass
class TokenBytes:
    """Per id: its bytes (b"" for special tokens, which all map to END) and a prefix index."""

    tokenizer: object
    table: list[bytes]
    special: torch.Tensor  # [vocab] bool
    first_byte: torch.Tensor  # [vocab] long: the first byte, END for specials
    _sorted: list[bytes] = field(repr=False, default_factory=list)
    _sorted_ids: list[int] = field(repr=False, default_factory=list)
    _single_byte: dict[bytes, int] = field(repr=False, default_factory=dict)
    memo_bytes: int = VALID_ROWS_BYTES
    # left token -> (valid row, checked row), least recently used first
    _memo: OrderedDict[int | None, tuple[torch.Tensor, torch.Tensor]] = field(repr=False, default_factory=OrderedDict)

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> TokenBytes:
        """`vocab_size`: the model's logit width, which may exceed the tokenizer (padding rows are special)."""
        byte_level = _is_byte_level(tokenizer)
        to_byte = _gpt2_unicode_to_byte()
        n = max(len(tokenizer), vocab_size or 0)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials = set(tokenizer.all_special_ids) | {i for i, tok in added.items() if tok.special}
        table: list[bytes] = [b""] * n
        special = torch.ones(n, dtype=torch.bool)
        for piece, i in tokenizer.get_vocab().items():
            if i < n and i not in specials:
                # added (non-special) tokens, e.g. Gemma's whitespace runs, are stored as plain text
                table[i] = added[i].content.encode("utf-8") if i in added else _piece_bytes(piece, byte_level, to_byte)
                special[i] = len(table[i]) == 0
        first = torch.tensor([t[0] if t else END for t in table], dtype=torch.long)
        order = sorted((t, i) for i, t in enumerate(table) if t)
        single = {t: i for t, i in order if len(t) == 1}
        return cls(tokenizer, table, special, first, [t for t, _ in order], [i for _, i in order], single)

    @property
    def memo_rows(self) -> int:
        """How many left tokens' rows the memo keeps (at least 16, whatever the vocabulary)."""
        return max(16, self.memo_bytes // (2 * len(self.table)))

    @cached_property
    def max_len(self) -> int:
        """The longest token's length in bytes."""
        return max(len(t) for t in self.table)

    def starting_with(self, prefix: bytes, longer: bool) -> list[int]:
        """Ids whose bytes start with `prefix` (and, with `longer`, run past it)."""
        lo = bisect.bisect_left(self._sorted, prefix)
        hi = lo
        while hi < len(self._sorted) and self._sorted[hi].startswith(prefix):
            hi += 1
        return [i for t, i in zip(self._sorted[lo:hi], self._sorted_ids[lo:hi]) if not longer or len(t) > len(prefix)]

    def ids_of(self, data: bytes) -> list[int]:
        """Ids whose bytes are exactly `data` (several with byte fallback; b"": the special ids, END)."""
        if not data:
            return torch.nonzero(self.special).flatten().tolist()
        lo = bisect.bisect_left(self._sorted, data)
        hi = lo
        while hi < len(self._sorted) and self._sorted[hi] == data:
            hi += 1
        return self._sorted_ids[lo:hi]

    def decode(self, ids: list[int]) -> bytes:
        return b"".join(self.table[i] for i in ids)

    def encode(self, data: bytes) -> list[int]:
        """The canonical encoding of `data` (special-token strings are not matched).

        Bytes that are not UTF-8 text (a partial character, stray continuation bytes) cannot go
        through the text tokenizer; they become single-byte tokens (byte-level BPE has one per
        byte, SentencePiece its `<0xNN>` fallback pieces) between the encoded text runs."""
        if not data:
            return []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = data[err.start:err.end]
            missing = [b for b in bad if bytes([b]) not in self._single_byte]
            if missing:
                raise ValueError(f"the tokenizer has no token for byte 0x{missing[0]:02x}") from err
            return (self.encode(data[: err.start]) + [self._single_byte[bytes([b])] for b in bad]
                    + self.encode(data[err.end:]))
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode_reusing(self, text: bytes, end: int, known: list[int], known_end: int) -> tuple[list[int], int]:
        """(encode(text[:end]), k) where its first k tokens are known[:k]; `known` is the canonical encoding of
        text[:known_end].

        Only the bytes after a cut some tokens back in `known` (at least the longest token's length before
        `end`) go through the tokenizer, so a long text costs what its last few tokens cost, not its length. The
        kept tokens and the tail's encoding are each canonical; when the pair across the cut is canonical too, the
        whole is (canonicality is pairwise, the module docstring's premise, which `valid_after` rests on as well),
        and a byte string has one canonical encoding: this one. The pair is checked only where its bytes are text
        (a token that is part of a character cannot be encoded alone), and the cut is never inside a character:
        the bytes after it would not be text, and `encode` would give them single-byte tokens that the whole
        text's encoding does not have. Where either fails, the cut moves further back, down to encoding
        everything."""
        margin = self.max_len
        while True:
            k, cut = len(known), known_end
            while k > 0 and (cut > end - margin or k > len(known) - 2 or text[cut] & 0xC0 == 0x80):
                k -= 1
                cut -= len(self.table[known[k]])
            if k == 0:
                return self.encode(text[:end]), 0
            tail = self.encode(text[cut:end])
            pair = self.table[known[k - 1]] + self.table[tail[0]]
            if _is_text(pair) and self.encode(pair) == [known[k - 1], tail[0]]:
                return known[:k] + tail, k
            margin *= 2

    def valid_after(self, left: int | None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """[vocab] bool: the tokens v for which [left, v] is canonical (left=None: v alone is).

        Only the entries for `ids` (all when None) are guaranteed checked; unchecked entries read
        True. Rows are memoized per left token (the `memo_rows` most recently used). Special tokens are always allowed (they end the
        text); pairs whose bytes are not whole UTF-8 text cannot be checked by the text
        tokenizer and count as valid."""
        if left in self._memo:
            self._memo.move_to_end(left)
            row, checked = self._memo[left]
        else:
            row, checked = torch.ones(len(self.table), dtype=torch.bool), self.special.clone()
            self._memo[left] = (row, checked)
            while len(self._memo) > self.memo_rows:
                self._memo.popitem(last=False)
        todo = (~checked).nonzero().squeeze(1) if ids is None else ids[~checked[ids]]
        if todo.numel():
            self._check_pairs(left, todo.tolist(), row)
            checked[todo] = True
        return row

    def _check_pairs(self, left: int | None, candidates: list[int], row: torch.Tensor) -> None:
        head = b"" if left is None else self.table[left]
        texts, ids = [], []
        for v in candidates:
            try:
                texts.append((head + self.table[v]).decode("utf-8"))
                ids.append(v)
            except UnicodeDecodeError:
                pass
        encoded = [e.ids for e in self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
        for v, enc in zip(ids, encoded):
            row[v] = enc == ([v] if left is None else [left, v])
