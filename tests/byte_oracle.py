"""Brute-force references for the byte-level tests: tiny tokenizers, a table LM with a
finite support, and the exact distribution over byte strings by enumeration.

The enumeration uses the definition directly (every complete token sequence, each step's
next-token distribution renormalized over the tokens that keep the *whole* sequence
canonical, checked by re-encoding it), so it shares no code with the cover sum.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import torch

from tests.fakes import FakeSequence

CORPUS = ["ab ab abc", "ba cab ca", "aab bca abba", "c1 12 a2b", "cc ab12 b a"]


def gpt2_style_tokenizer(vocab_size: int = 24):
    """Byte-level BPE with the GPT-2 regex pretokenizer and digits split one per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                                            show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def sentencepiece_style_tokenizer(vocab_size: int = 24):
    """SentencePiece-style BPE: U+2581 for spaces (each starts a piece), byte fallback, digits split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Metaspace(prepend_scheme="never")])
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre
    trained.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                                                show_progress=False))
    spec = json.loads(trained.to_str())["model"]
    vocab = dict(spec["vocab"])
    for piece in ("<0xC3>", "<0xA9>"):  # byte-fallback pieces: 'é' is not in the vocabulary
        vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="never"), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(["<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


class TableLM:
    """A backend whose logits are a fixed pseudo-random function of the token context.

    Mass only on `allowed` ids and EOS; after `max_new` tokens beyond the context, only EOS,
    so every text ends within a few tokens and the support can be enumerated."""

    def __init__(self, vocab_size: int, allowed: list[int], eos: int, context_len: int, max_new: int, seed: int = 0):
        self.vocab_size, self.hidden_size, self.max_length = vocab_size, 4, 10_000
        self.allowed, self.eos, self.context_len, self.max_new, self.seed = allowed, eos, context_len, max_new, seed
        self.forward_passes = self.open_sequences = 0
        self.n_parameters, self.exact_full_distribution, self.returned_top_k = 0, True, vocab_size
        self.model_id = self.fingerprint = f"table-{seed}"
        self.drafts_in_one_call = False

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        out = torch.full((self.vocab_size,), float("-inf"))
        out[self.eos] = 0.0
        if len(tokens) - self.context_len >= self.max_new:
            return out
        digest = hashlib.sha256(f"{self.seed}:{tokens}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        scores = 2.0 * torch.randn(len(self.allowed) + 1, generator=gen)
        out[self.allowed] = scores[:-1]
        out[self.eos] = scores[-1] - 1.0
        return out

    def open(self, prompts, want_hidden=False, *, rows_at=None, top_k=None):
        seqs = [FakeSequence() for _ in prompts]
        self.open_sequences += len(seqs)
        return list(zip(seqs, self.extend(seqs, prompts, want_hidden, rows_at=rows_at, top_k=top_k)))

    def extend(self, seqs, new_ids, want_hidden=False, *, rows_at=None, top_k=None):
        from r2r.serving.backends.base import RowKind, StepOutput, resolve_rows

        assert top_k is None, "the table model returns full rows"
        self.forward_passes += 1
        outs = []
        for seq, ids, at in zip(seqs, new_ids, resolve_rows(rows_at, new_ids)):
            assert ids and not seq.closed
            rows = [self.logits_after(seq.tokens + ids[: k + 1]) for k in at]
            seq.tokens += ids
            outs.append(StepOutput(torch.stack(rows) if rows else torch.empty(0, self.vocab_size),
                                   torch.zeros(len(at), 4) if want_hidden else None, RowKind.LOGITS))
        return outs

    def draft(self, seqs, new_ids, n_tokens, want_hidden=False):
        from r2r.serving.backends.base import draft_by_extending

        return draft_by_extending(self, seqs, new_ids, n_tokens, want_hidden)

    def fork(self, seq, length):
        self.open_sequences += 1
        return FakeSequence(seq.tokens[:length])

    def extend_with_branches(self, seqs, new_ids, branches, want_hidden=False):
        from r2r.serving.backends.base import branch_by_forking

        return branch_by_forking(self, seqs, new_ids, branches, want_hidden)

    def truncate(self, seq, length):
        del seq.tokens[length:]

    def close(self, seq):
        if not seq.closed:
            self.open_sequences -= 1
        seq.closed = True


def token_bytes(tokenizer) -> dict[int, bytes]:
    """Token id -> bytes, read independently of serving.byte_level.token_bytes (via the decoder on one id)."""
    out = {}
    for i in range(len(tokenizer)):
        if i in tokenizer.all_special_ids:
            continue
        out[i] = tokenizer.decode([i]).encode("utf-8")
    return out


def is_canonical(tokenizer, pieces: dict[int, bytes], ids: list[int]) -> bool:
    text = b"".join(pieces[i] for i in ids).decode("utf-8")
    return tokenizer(text, add_special_tokens=False)["input_ids"] == ids


def enumerate_texts(lm: TableLM, tokenizer, context: list[int], canonical: bool = True) -> dict[bytes, float]:
    """P(text) for every complete text, summed over its token sequences."""
    pieces = token_bytes(tokenizer)
    probs: dict[bytes, float] = defaultdict(float)

    def walk(ids: list[int], p: float) -> None:
        logp = torch.log_softmax(lm.logits_after(context + ids).double(), 0)
        keep = [v for v in lm.allowed if logp[v] > float("-inf")
                and (not canonical or is_canonical(tokenizer, pieces, ids + [v]))]
        options = keep + [lm.eos]
        z = torch.logsumexp(logp[options], 0)
        probs[b"".join(pieces[i] for i in ids)] += p * float(torch.exp(logp[lm.eos] - z))
        for v in keep:
            walk(ids + [v], p * float(torch.exp(logp[v] - z)))

    walk([], 1.0)
    return dict(probs)


def prefix_table(texts: dict[bytes, float]) -> tuple[dict[bytes, float], dict[bytes, torch.Tensor]]:
    """P(text starts with x) and the exact next-byte distribution [257] for every prefix x."""
    starts: dict[bytes, float] = defaultdict(float)
    for text, p in texts.items():
        for k in range(len(text) + 1):
            starts[text[:k]] += p
    nxt: dict[bytes, torch.Tensor] = {}
    for x, px in starts.items():
        row = torch.zeros(257, dtype=torch.float64)
        row[256] = texts.get(x, 0.0) / px
        for b in range(256):
            row[b] = starts.get(x + bytes([b]), 0.0) / px
        nxt[x] = row
    return dict(starts), nxt


class RestrictedHF:
    """A real transformers model (through HFBackend: KV cache, forks, batching) with its
    logits restricted like TableLM's, so its byte distribution can be enumerated too.
    `logits_after` is the independent reference: one uncached forward over the tokens."""

    def __init__(self, inner, allowed: list[int], eos: int, context_len: int, max_new: int):
        self.inner, self.allowed, self.eos, self.context_len, self.max_new = inner, allowed, eos, context_len, max_new
        self.vocab_size, self.hidden_size, self.max_length = inner.vocab_size, inner.hidden_size, inner.max_length
        self.n_parameters, self.exact_full_distribution, self.returned_top_k = inner.n_parameters, True, inner.vocab_size
        self.drafts_in_one_call = False
        self.model_id, self.fingerprint = inner.model_id, inner.fingerprint
        self._mask = torch.full((inner.vocab_size,), float("-inf"))
        self._mask[allowed + [eos]] = 0.0

    @property
    def forward_passes(self) -> int:
        return self.inner.forward_passes

    @property
    def open_sequences(self) -> int:
        return self.inner.open_sequences

    def _restrict(self, logits: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """Row k is the one after the token at positions[k]."""
        out = logits + self._mask
        for k, pos in enumerate(positions):
            if pos + 1 - self.context_len >= self.max_new:
                out[k] = float("-inf")
                out[k, self.eos] = 0.0
        return out

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.inner.model(input_ids=torch.tensor([tokens])).logits[0, -1].float()
        return self._restrict(logits[None], [len(tokens) - 1])[0]

    def open(self, prompts, want_hidden=False, *, rows_at=None, top_k=None):
        from r2r.serving.backends.base import resolve_rows

        opened = self.inner.open(prompts, want_hidden, rows_at=rows_at, top_k=top_k)
        return [(seq, self._wrap(out, at))
                for (seq, out), at in zip(opened, resolve_rows(rows_at, prompts))]

    def extend(self, seqs, new_ids, want_hidden=False, *, rows_at=None, top_k=None):
        from r2r.serving.backends.base import resolve_rows

        starts = [s.length for s in seqs]
        outs = self.inner.extend(seqs, new_ids, want_hidden, rows_at=rows_at, top_k=top_k)
        return [self._wrap(out, [start + k for k in at])
                for out, start, at in zip(outs, starts, resolve_rows(rows_at, new_ids))]

    def draft(self, seqs, new_ids, n_tokens, want_hidden=False):
        from r2r.serving.backends.base import draft_by_extending

        return draft_by_extending(self, seqs, new_ids, n_tokens, want_hidden)

    def extend_with_branches(self, seqs, new_ids, branches, want_hidden=False):
        """The inner backend's one-pass tree (HF), restricted at each row's position."""
        starts = [s.length for s in seqs]
        outs = self.inner.extend_with_branches(seqs, new_ids, branches, want_hidden)
        return [(self._wrap(own, [start + k for k in range(len(ids))]),
                 [self._wrap(out, [b.at + k for k in range(len(b.ids))]) for b, out in zip(bs, branch_outs)])
                for (own, branch_outs), start, ids, bs in zip(outs, starts, new_ids, branches)]

    def _wrap(self, out, positions: list[int]):
        from r2r.serving.backends.base import StepOutput

        return StepOutput(self._restrict(out.logits, positions), out.hidden, out.kind)

    def fork(self, seq, length):
        return self.inner.fork(seq, length)

    def truncate(self, seq, length):
        self.inner.truncate(seq, length)

    def close(self, seq):
        self.inner.close(seq)


def random_source(alphabet: bytes, max_len: int, seed: int) -> dict[bytes, float]:
    """A random distribution over every string of up to max_len bytes from `alphabet`."""
    from itertools import product

    gen = torch.Generator().manual_seed(seed)
    strings = [bytes(c) for n in range(max_len + 1) for c in product(alphabet, repeat=n)]
    weights = torch.rand(len(strings), generator=gen, dtype=torch.float64) ** 3
    weights /= weights.sum()
    return dict(zip(strings, weights.tolist()))


class SourceLM(TableLM):
    """The exact token LM of a byte source under a tokenizer: P(next token | tokens) by summing the
    source over the strings whose canonical encoding continues that way. Its byte distribution
    *is* the source, whatever the tokenizer: two of them are one model with two tokenizers."""

    def __init__(self, source: dict[bytes, float], tokenizer, context_len: int = 1):
        super().__init__(len(tokenizer), [], tokenizer.eos_token_id, context_len, max_new=10**9)
        self.prefix_mass: dict[tuple[int, ...], float] = defaultdict(float)
        self.end_mass: dict[tuple[int, ...], float] = defaultdict(float)
        for text, p in source.items():
            ids = tuple(tokenizer(text.decode(), add_special_tokens=False)["input_ids"])
            for k in range(len(ids) + 1):
                self.prefix_mass[ids[:k]] += p
            self.end_mass[ids] += p

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        t = tuple(tokens[self.context_len:])
        mass = torch.zeros(self.vocab_size, dtype=torch.float64)
        for v in range(self.vocab_size):
            mass[v] = self.prefix_mass.get(t + (v,), 0.0)
        mass[self.eos] = self.end_mass.get(t, 0.0)
        return torch.log(mass).float()
