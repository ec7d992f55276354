"""Exact byte-level probabilities against brute-force enumeration (tests/byte_oracle.py)."""
from __future__ import annotations

import math
import random
from typing import NamedTuple

import pytest
import torch
from transformers import AutoTokenizer

from r2r.serving.byte_level.probabilities import ByteLevelLM
from r2r.serving.byte_level.token_bytes import END, TokenBytes
from tests.byte_oracle import (
    RestrictedHF,
    TableLM,
    enumerate_texts,
    gpt2_style_tokenizer,
    prefix_table,
    sentencepiece_style_tokenizer,
)
from tests.conftest import TOKENIZER_DIR

TOKENIZERS = {"gpt2-bpe": gpt2_style_tokenizer, "spm-bpe-byte-fallback": sentencepiece_style_tokenizer}
MAX_NEW = 3


def _table_lm(tokenizer, seed: int = 0) -> TableLM:
    vocab = TokenBytes.from_tokenizer(tokenizer)
    allowed = [i for i, piece in enumerate(vocab.table) if piece and piece.isascii() and len(piece) <= 3]
    return TableLM(len(tokenizer), allowed, tokenizer.eos_token_id, context_len=1, max_new=MAX_NEW, seed=seed)


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def setup(request):
    tokenizer = TOKENIZERS[request.param]()
    lm = _table_lm(tokenizer)
    texts = enumerate_texts(lm, tokenizer, [tokenizer.eos_token_id])
    starts, nxt = prefix_table(texts)
    return tokenizer, lm, texts, starts, nxt


def test_enumeration_is_a_distribution(setup):
    _, _, texts, starts, _ = setup
    assert math.isclose(sum(texts.values()), 1.0, rel_tol=1e-9)
    assert starts[b""] == pytest.approx(1.0)
    assert len(texts) > 100, "the toy support should be rich enough to have ambiguous prefixes"


def test_next_byte_and_prefix_prob_match_enumeration_on_every_prefix(setup):
    tokenizer, lm, _, starts, nxt = setup
    blm = ByteLevelLM(lm, tokenizer)
    for x in sorted(starts):
        (state,) = blm.start([None])
        blm.push([state], [x])  # the whole prefix at once: the multi-byte (handoff) path
        assert blm.prefix_logprob(state) == pytest.approx(math.log(starts[x]), abs=1e-5), x
        got = torch.exp(blm.distribution(state))
        assert torch.allclose(got, nxt[x], atol=1e-5), (x, got[nxt[x] > 0], nxt[x][nxt[x] > 0])
        blm.close(state)
    assert lm.open_sequences == 0, "every row sequence is closed"
    assert torch.allclose(torch.exp(blm.next_byte_logprobs(x)), nxt[x], atol=1e-5)
    assert blm.logprob(x) == pytest.approx(math.log(starts[x]), abs=1e-5)


def test_incremental_state_one_byte_at_a_time_matches_enumeration(setup):
    tokenizer, lm, texts, starts, nxt = setup
    blm = ByteLevelLM(lm, tokenizer)
    for text in sorted(texts, key=lambda t: -texts[t])[:40]:
        (state,) = blm.start([None])
        for k in range(len(text) + 1):
            if k:
                passes = lm.forward_passes
                blm.push([state], [text[k - 1:k]])
                assert lm.forward_passes - passes <= 1, "one batched pass per byte"
            assert torch.allclose(torch.exp(blm.distribution(state)), nxt[text[:k]], atol=1e-5)
            assert blm.prefix_logprob(state) == pytest.approx(math.log(starts[text[:k]]), abs=1e-5)
        blm.close(state)


def test_prefixes_end_mid_token_and_at_pretoken_boundaries(setup):
    """The enumerated prefixes include both kinds of ends (so the tests above cover them)."""
    tokenizer, _, _, starts, _ = setup
    vocab = TokenBytes.from_tokenizer(tokenizer)
    mid_token = [x for x in starts if x and vocab.encode(x) != vocab.encode(x + b"a")[: len(vocab.encode(x))]]
    at_space = [x for x in starts if x.endswith(b" ")]
    assert mid_token and at_space


def test_naive_token_conditioning_is_biased(setup):
    """Tokenize the prefix, read the next-token distribution: wrong on prefixes that end mid-token."""
    tokenizer, lm, _, starts, nxt = setup
    vocab = TokenBytes.from_tokenizer(tokenizer)
    worst = 0.0
    for x in starts:
        ids = [tokenizer.eos_token_id] + vocab.encode(x)
        if len(ids) - 1 >= MAX_NEW:
            continue
        probs = torch.softmax(lm.logits_after(ids).double(), 0)
        naive = torch.zeros(257, dtype=torch.float64).index_add_(0, vocab.first_byte, probs)
        worst = max(worst, float((naive - nxt[x]).abs().sum()) / 2)
    assert worst > 0.2, f"naive conditioning should be far off somewhere (worst TV {worst:.3f})"


def test_batched_states_evolve_independently(setup):
    tokenizer, lm, texts, _, nxt = setup
    blm = ByteLevelLM(lm, tokenizer)
    picks = sorted(texts, key=lambda t: -len(t))[:6]
    states = blm.start([None] * len(picks))
    for k in range(max(len(t) for t in picks)):
        passes = lm.forward_passes
        blm.push(states, [t[k:k + 1] for t in picks])
        assert lm.forward_passes - passes <= 1
        for t, state in zip(picks, states):
            assert torch.allclose(torch.exp(blm.distribution(state)), nxt[t[: k + 1] if k < len(t) else t], atol=1e-5)
    for state in states:
        blm.close(state)


def test_leaf_sampling_then_token_level_continuation_is_exact(setup):
    """Handoff semantics: sample a cover of x, continue token by token: P(text | starts with x)."""
    tokenizer, lm, texts, starts, _ = setup
    blm = ByteLevelLM(lm, tokenizer)
    x = max((t for t in starts if 2 <= len(t) <= 3), key=lambda t: starts[t])
    want = {t: p / starts[x] for t, p in texts.items() if t.startswith(x)}
    gen = torch.Generator().manual_seed(0)
    counts: dict[bytes, int] = {}
    n = 4000
    for _ in range(n):
        (state,) = blm.start([None])
        blm.push([state], [x])
        while True:
            leaf = blm.pick_leaf(state, generator=gen)
            if leaf.token == tokenizer.eos_token_id:
                break
            blm.commit(state, leaf)
            blm.evaluate([state])
        counts[state.text] = counts.get(state.text, 0) + 1
        blm.close(state)
    tv = 0.5 * sum(abs(counts.get(t, 0) / n - p) for t, p in want.items())
    tv += 0.5 * sum(c / n for t, c in counts.items() if t not in want)
    assert tv < 0.05, f"total variation {tv:.3f} from the exact conditional"


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_real_transformer_through_the_hf_backend_matches_enumeration(tmp_path, kind: str):
    """Same oracle with a (random, tiny) Llama behind HFBackend: forks, KV reuse, batched rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r2r.serving.backends.hf import HFBackend

    tokenizer = TOKENIZERS[kind]()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    table = _table_lm(tokenizer)
    lm = RestrictedHF(HFBackend(tmp_path), table.allowed, tokenizer.eos_token_id, context_len=1, max_new=2)
    texts = enumerate_texts(lm, tokenizer, [tokenizer.eos_token_id])
    starts, nxt = prefix_table(texts)
    blm = ByteLevelLM(lm, tokenizer)
    picks = sorted(texts, key=lambda t: -texts[t])[:8]
    states = blm.start([None] * len(picks))
    for k in range(max(len(t) for t in picks) + 1):
        if k:
            blm.push(states, [t[k - 1:k] for t in picks])
        for t, state in zip(picks, states):
            x = t[:k]
            assert torch.allclose(torch.exp(blm.distribution(state)), nxt[x], atol=1e-5), x
            assert blm.prefix_logprob(state) == pytest.approx(math.log(starts[x]), abs=1e-5)
    for state in states:
        blm.close(state)
    for x in sorted(starts, key=len)[-40:]:  # the longest prefixes in one jump
        assert torch.allclose(torch.exp(blm.next_byte_logprobs(x)), nxt[x], atol=1e-5), x
    assert lm.open_sequences == 0


def test_token_bytes_reads_byte_fallback_and_spaces():
    vocab = TokenBytes.from_tokenizer(sentencepiece_style_tokenizer())
    ids = vocab.encode("ab é".encode())
    assert vocab.decode(ids) == "ab é".encode()
    assert any(vocab.table[i] == b"\xc3" for i in ids)
    assert vocab.first_byte[vocab.tokenizer.eos_token_id] == END


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_canonical_pair_memo_is_bounded_and_exact(kind: str):
    """A memo of 16 rows over every left token: never more rows held, and every row equals the pairs' canonical
    encodings checked one by one (`encode(decode([left, v])) == [left, v]`)."""
    tokenizer = TOKENIZERS[kind]()
    bounded = TokenBytes.from_tokenizer(tokenizer)
    bounded.memo_bytes = 16 * 2 * len(bounded.table)
    assert bounded.memo_rows == 16
    lefts = [i for i, piece in enumerate(bounded.table) if piece and piece.isascii()][:60]
    rights = torch.tensor([i for i, piece in enumerate(bounded.table) if piece and piece.isascii()][:40])
    for sweep in range(2):  # the second sweep recomputes evicted rows
        for left in lefts:
            row = bounded.valid_after(left, rights)
            assert len(bounded._memo) <= 16, f"memo grew to {len(bounded._memo)} rows"
            for v in rights.tolist():
                want = bounded.encode(bounded.table[left] + bounded.table[v]) == [left, v]
                assert bool(row[v]) == want, f"pair ({left}, {v}) on sweep {sweep}"


class Alphabet(NamedTuple):
    """What a random text is made of, within a vocabulary's alphabet: words, the gaps between them, and whether
    stray bytes (the lead byte of a two-byte character with no continuation: not UTF-8 text) may appear."""

    words: list[str]
    gaps: list[str]
    stray: bool


def _random_text(rng: random.Random, alphabet: Alphabet, n_bytes: int) -> bytes:
    """Words and gaps of the alphabet, and (where it allows them) now and then a stray byte."""
    out = bytearray()
    while len(out) < n_bytes:
        roll = rng.random()
        if roll < 0.05 and alphabet.stray:
            out += b"\xc3"
        elif roll < 0.2:
            out += rng.choice(alphabet.gaps).encode()
        else:
            out += rng.choice(alphabet.words).encode() + rng.choice(["", " "]).encode()
    return bytes(out)


def multibyte_bpe_tokenizer():
    """Byte-level BPE with every byte in its alphabet and merges inside multi-byte characters (é, 🙂, 日本): a
    character is one token or split across two, so a text cut mid-character encodes its end as single bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["café 🙂 日本 naïve", "ab 🙂🙂 日本語 é", "abc café, 日 本 🙂!"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


TESTBED_WORDS = ["Ava", "finds", "5", "more:", "12", "+", "=", "17.", "So", "the", "answer", "is", "let", "us", "é"]
TESTBED_GAPS = [" ", "  ", "\n", " \n ", ", ", "   "]
ENCODE_CASES = {  # tokenizer and the alphabet of its texts (the toys know only their corpus's bytes)
    "gpt2-bpe": (gpt2_style_tokenizer, Alphabet(["ab", "abc", "ba", "cab", "c1", "12", "a2b", "aab", "bca", "abba"],
                                                [" ", "  ", "   "], stray=False)),
    "spm-bpe-byte-fallback": (sentencepiece_style_tokenizer,
                              Alphabet(["ab", "abc", "ba", "cab", "c1", "12", "a2b", "é"], [" ", "  ", "   "],
                                       stray=True)),
    "multibyte-bpe": (multibyte_bpe_tokenizer,
                      Alphabet(["café", "🙂", "日本", "naïve", "ab", "日本語", "é", "!"], [" ", "  ", ", "], stray=True)),
    # the testbed's two vocabularies: byte-level BPE, and SentencePiece-style
    "testbed": (lambda: AutoTokenizer.from_pretrained(TOKENIZER_DIR),
                Alphabet(TESTBED_WORDS, TESTBED_GAPS, stray=True)),
    "testbed-x": (lambda: AutoTokenizer.from_pretrained(TOKENIZER_DIR.parent / "tokenizer-x"),
                  Alphabet(TESTBED_WORDS, TESTBED_GAPS, stray=False)),
}


@pytest.mark.parametrize("kind", sorted(ENCODE_CASES))
def test_encoding_reused_from_a_known_prefix_equals_encoding_everything(kind: str):
    """`encode_reusing` against `encode` on 2 kB texts: for ends before, at and after the known prefix's end
    (mid-token, mid-character, at spaces), the tokens equal the whole text's encoding, and the ones it says are
    kept are the known prefix's."""
    make_tokenizer, alphabet = ENCODE_CASES[kind]
    vocab = TokenBytes.from_tokenizer(make_tokenizer())
    rng = random.Random(kind)
    checked = reused = 0
    for _ in range(4):
        text = _random_text(rng, alphabet, 2000)
        assert vocab.decode(vocab.encode(text)) == text, "the text is in the vocabulary's alphabet"
        for _ in range(40):
            known_end = rng.randrange(len(text) // 2, len(text))
            end = min(len(text), max(1, known_end + rng.randrange(-vocab.max_len, 3 * vocab.max_len)))
            known = vocab.encode(text[:known_end])
            ids, kept = vocab.encode_reusing(text, end, known, known_end)
            assert ids == vocab.encode(text[:end]), (text[max(0, end - 40):end], known_end - end)
            assert ids[:kept] == known[:kept]
            checked, reused = checked + 1, reused + (kept > len(known) - 3 * vocab.max_len)
    assert reused > 0.9 * checked, f"only {reused} of {checked} encodings reused the known prefix"


class _CountingTokenBytes(TokenBytes):
    """Counts the bytes that go through the tokenizer."""

    encoded: int = 0

    def encode(self, data: bytes) -> list[int]:
        self.encoded += len(data)
        return super().encode(data)


def test_rows_of_a_long_text_pushed_in_chunks_hold_its_canonical_tokens():
    """A state pushed a long text a few bytes at a time, with the model's own tokens between, plans every new
    row from the longest one: every row's tokens are the canonical encoding of its prefix, encoding only the
    last few tokens' bytes each (not the whole text again), and after bytes the next-byte distribution equals
    that of a fresh state pushed the whole text at once (whose rows are encoded from nothing)."""
    tokenizer = gpt2_style_tokenizer()
    vocab = TokenBytes.from_tokenizer(tokenizer)
    lm = TableLM(len(tokenizer), [i for i, piece in enumerate(vocab.table) if piece], tokenizer.eos_token_id,
                 context_len=1, max_new=10_000)
    blm = ByteLevelLM(lm, tokenizer)
    blm.vocab = counting = _CountingTokenBytes.from_tokenizer(tokenizer)
    rng = random.Random(0)
    (state,) = blm.start([None])
    for _ in range(500):
        leaf = blm.pick_leaf(state)
        if rng.random() < 0.2 and blm.piece(state, leaf):  # the next push starts from the model's one row
            blm.commit(state, leaf)
            blm.evaluate([state])
        else:
            blm.push([state], [_random_text(rng, ENCODE_CASES["gpt2-bpe"][1], 1)[: rng.randint(1, 6)]])
        for split, row in state.rows.items():
            assert row.ids == vocab.encode(state.text[:split]), (split, state.text[max(0, split - 30):split])
    assert counting.encoded < 100 * 500, f"{counting.encoded} bytes encoded: the rows re-encode the text"
    blm.push([state], [b"ab"])  # bytes last: a state at its own token's boundary conditions on that token
    assert len(state.text) > 1000
    (fresh,) = blm.start([None])
    blm.push([fresh], [state.text])
    assert torch.allclose(blm.distribution(state).exp(), blm.distribution(fresh).exp(), atol=1e-12)
    assert blm.prefix_logprob(state) == pytest.approx(blm.prefix_logprob(fresh), abs=1e-9)
    blm.close(state)
    blm.close(fresh)


def _tiny_llama(path, tokenizer):
    """A random Llama whose next-token rows depend strongly on every earlier token (weights far from the default
    init's near-uniform outputs), so that a wrong key or value anywhere shows in the distributions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r2r.serving.backends.hf import HFBackend

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         initializer_range=0.5)
    with torch.random.fork_rng():  # the same weights every run, the global generator left as it was
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
    return HFBackend(path)


def _same_as_fresh(blm, state) -> None:
    """The state's distribution equals a fresh state's: one pushed its whole text, or, at the state's own token
    boundary, one opened on its tokens (whose next-token logits are the root's)."""
    if state.own_boundary:
        (fresh,) = blm.start([state.context + state.root.ids])
        assert torch.allclose(state.root.logits, fresh.root.logits, atol=1e-4)
    else:
        (fresh,) = blm.start([state.context])
        blm.push([fresh], [state.text])
        assert torch.allclose(blm.distribution(state).exp(), blm.distribution(fresh).exp(), atol=1e-5)
    blm.close(fresh)


def test_a_state_holds_one_sequence_of_kv_whatever_its_rows(tmp_path):
    """Through the HF backend, a state pushed a long text in chunks, with its own sampled tokens between (from
    any live row, evaluated or still pending when the next bytes arrive), holds one backend sequence, its trunk:
    the context and its root's tokens, while several rows are live; its distributions equal fresh states'."""
    tokenizer = gpt2_style_tokenizer()
    hf = _tiny_llama(tmp_path, tokenizer)
    blm = ByteLevelLM(hf, tokenizer)
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    (state,) = blm.start([None])
    several, off_root, pending = 0, 0, False
    for _ in range(160):
        leaf = None if pending else blm.pick_leaf(state, None, generator)
        if leaf is not None and rng.random() < 0.3 and blm.piece(state, leaf):
            off_root += leaf.split != state.root.split
            blm.commit(state, leaf)
            pending = rng.random() < 0.5  # the next bytes arrive while its own token is pending
            if pending:
                continue
            blm.evaluate([state])
        else:
            blm.push([state], [_random_text(rng, ENCODE_CASES["gpt2-bpe"][1], 1)[: rng.randint(1, 6)]])
            pending = False
        assert hf.held_lengths == [state.trunk.seq.length] and hf.open_sequences == 1
        assert state.held == state.trunk.seq.length == len(state.context) + len(state.root.ids), "it holds the root"
        _same_as_fresh(blm, state)
        several += len(state.rows) > 1
    assert several > 30 and off_root > 5, f"{several} steps had more than one live row, {off_root} commits left the root"
    assert len(state.text) > 200
    blm.close(state)
    assert hf.open_sequences == 0 and hf.held_lengths == []


def test_copies_of_a_state_share_its_trunk(tmp_path):
    """`fork_state` copies read the same backend sequence: a rollback point (pushed nothing) and copies pushed
    different bytes in one pass (none writes the trunk), then the original pushed (it writes, and the copies
    lose what it overwrote), and any of them going on alone (its own token, then bytes): each state's next-byte
    distribution equals a fresh state's pushed its whole text, and the copies hold no sequence of their own."""
    tokenizer = gpt2_style_tokenizer()
    hf = _tiny_llama(tmp_path, tokenizer)
    blm = ByteLevelLM(hf, tokenizer)
    rng = random.Random(1)
    alphabet = ENCODE_CASES["gpt2-bpe"][1]

    def chunk() -> bytes:
        return _random_text(rng, alphabet, 1)[: rng.randint(1, 6)]

    def check(states) -> None:
        for state in states:
            _same_as_fresh(blm, state)

    (state,) = blm.start([None])
    blm.push([state], [_random_text(rng, alphabet, 40)])
    overwritten = 0
    for step in range(16):
        mark = blm.fork_state(state)  # a rollback point: pushed nothing, it trusts all the original wrote
        copies = [blm.fork_state(state) for _ in range(2)]
        blm.push(copies, [chunk(), chunk()])  # two readers of one trunk in one pass
        assert hf.open_sequences == 1 and len(hf.held_lengths) == 1, "copies hold no sequence of their own"
        blm.push([state], [chunk()])  # the original writes the trunk, often re-tokenizing its last token
        # the original's tokens now differ from the rollback point's before the end of the point's
        overwrote = state.root.ids[: len(mark.root.ids)] != mark.root.ids
        check([state, mark, *copies])
        states = [state, mark, *copies]
        # any of them may go on alone: the rollback point whenever the original overwrote it
        survivor = mark if overwrote else states[step % len(states)]
        overwritten += overwrote
        for other in states:
            if other is not survivor:
                blm.close(other)
        state = survivor
        leaf = blm.pick_leaf(state)
        if blm.piece(state, leaf):
            blm.commit(state, leaf)
            blm.evaluate([state])
        blm.push([state], [chunk()])
        check([state])
        assert hf.open_sequences == 1
    assert overwritten >= 3, f"the original overwrote what a rollback point held only {overwritten} times"
    blm.close(state)
    assert hf.open_sequences == 0 and hf.held_lengths == []




def test_a_rows_stem_stays_within_what_its_state_holds(tmp_path):
    """`Row.stem` is what a commit from that row keeps of the trunk: its first `stem` tokens must be tokens the
    state holds there (the root's, up to `held`), also for rows kept across a push whose new root re-tokenized
    their own tokens (rare: counted)."""
    tokenizer = gpt2_style_tokenizer()
    blm = ByteLevelLM(_tiny_llama(tmp_path, tokenizer), tokenizer)
    alphabet, rng = ENCODE_CASES["gpt2-bpe"][1], random.Random(0)
    re_tokenized = 0
    for _ in range(400):
        (state,) = blm.start([None])
        for _ in range(2):
            kept = dict(state.rows)
            blm.push([state], [_random_text(rng, alphabet, 1)[: rng.randint(1, 12)]])
            ctx, root = len(state.context), state.root
            for split, row in state.rows.items():
                assert row.stem == 0 or ctx + row.stem <= state.held, split
                assert row.ids[: row.stem] == root.ids[: row.stem], split
                re_tokenized += kept.get(split) is row and row.ids != root.ids[: len(row.ids)]
        blm.close(state)
    assert re_tokenized >= 2, f"only {re_tokenized} kept rows were re-tokenized by a push"
