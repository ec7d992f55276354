"""Stop strings checked incrementally (`serving.decoding.stop_scan`) against the full-decode check: decoding the
whole output after every token (and every draft) and searching all of it. Same finish position, same text.

Fakes first: a tokenizer from a byte-piece vocab whose multi-byte characters span tokens, a word tokenizer that
rewrites text already written (" ." -> "."), a SentencePiece-like one that strips the window's first space; then
the routed engines with stop strings; then 1k- and 4k-token (slow) decodes of a tiny model with the testbed
tokenizer."""
from __future__ import annotations

import random

import pytest

from r2r.router.policies import RandomPolicy
from r2r.serving.decoding import decode
from r2r.serving.decoding.engine import BlockConfig
from r2r.serving.decoding.generation import FinishReason
from r2r.serving.decoding.routed import generate_sequential, generate_speculative
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.stop_scan import StopScan
from r2r.serving.decoding.stopping import StopRule, cut_at_stop

from .fakes import FakeBackend
from .test_cross_tokenizer import long_pair  # noqa: F401  (the fixture: two long-running byte-level LMs)

# "一" is e4 b8 80, "😀" is f0 9f 98 80: split across tokens in several ways, plus an invalid byte
PIECES = [b"a", b"b", b" ", b"x\xe4", b"\xb8", b"\x80y", b"\xe4\xb8", b"\x80", b"\xf0\x9f", b"\x98\x80", b"\xf0",
          b"\x9f\x98", b"\xff", b"st", b"op", b"\xe4\xb8\x80"]


def byte_decode(ids: list[int]) -> str:
    """Byte-level BPE's decode: the tokens' bytes joined, U+FFFD for each invalid sequence."""
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


WORDS = ["a", "b", ".", "'s", "▁c", "▁d", "?"]


def cleanup_decode(ids: list[int]) -> str:
    """Words joined by spaces, then `clean_up_tokenization_spaces`' rewrites: a later token changes the space
    before it, text already decoded."""
    return " ".join(WORDS[i] for i in ids).replace(" .", ".").replace(" 's", "'s").replace(" ?", "?")


def sentencepiece_decode(ids: list[int]) -> str:
    """SentencePiece's decode: "▁" is a space, and the first one of the decoded span is stripped."""
    text = "".join(WORDS[i] for i in ids).replace("▁", " ")
    return text[1:] if text.startswith(" ") else text


def first_stop(decode_fn, ids: list[int], stop: tuple[str, ...]) -> int | None:
    """The reference: the first output length whose whole decoded text holds a stop string."""
    return next((t for t in range(1, len(ids) + 1) if any(s in decode_fn(ids[:t]) for s in stop)), None)


def scan_stop(scan: StopScan, ids: list[int]) -> int | None:
    """The incremental check, committing one token at a time."""
    return next((t for t in range(1, len(ids) + 1) if scan.found(ids[:t], t, commit=True)), None)


@pytest.mark.parametrize("decode_fn, vocab", [(byte_decode, len(PIECES)), (cleanup_decode, len(WORDS)),
                                              (sentencepiece_decode, len(WORDS))])
def test_incremental_stop_equals_full_decode_on_random_outputs(decode_fn, vocab: int) -> None:
    """Random 300-token outputs, stop strings cut from their own text (so they occur, often across token
    boundaries and inside multi-byte characters): the first stop and every draft check agree with the full decode."""
    rng = random.Random(0)
    checked = stopped = 0
    for trial in range(60):
        ids = [rng.randrange(vocab) for _ in range(300)]
        text = decode_fn(ids)
        cuts = [rng.randrange(len(text) // 2, len(text)) for _ in range(2)]  # mostly first seen late
        stop = tuple({text[i:i + rng.randint(1, 8)] for i in cuts})
        if trial % 3 == 0:
            stop = ("never there", *stop)
        want = first_stop(decode_fn, ids, stop)
        assert scan_stop(StopScan(stop, decode_fn, context=rng.choice([1, 2, 8])), ids) == want, \
            f"incremental stop differs from the full decode for {stop!r} on {ids[:want]}"
        stopped += want is not None
        # drafts: before the stop, peeking at the committed output + a few tentative tokens, then committing one
        scan = StopScan(stop, decode_fn, context=2)
        for t in range(1, (want or len(ids)) - 1):
            drafts = [rng.randrange(vocab) for _ in range(rng.randint(1, 5))]
            peeked = scan.found(ids[:t - 1], t - 1, drafts, commit=False)
            assert peeked == any(s in decode_fn(ids[:t - 1] + drafts) for s in stop), f"draft check at {t}"
            assert not scan.found(ids[:t], t, commit=True), f"a stop before the reference's at {t}"
            checked += 1
    assert stopped == 60 and checked > 1000, "stop strings that occur, mostly late, for the test to mean anything"


def test_a_stop_string_across_tokens_inside_a_character() -> None:
    """"一y" spans three tokens and starts inside one: found at the token that completes it, not before."""
    ids = [0, 3, 4, 5, 1]  # "a", "x\xe4", "\xb8", "\x80y", "b": "ax一yb"
    assert byte_decode(ids) == "ax一yb"
    for context in (1, 8):
        scan = StopScan(("一y",), byte_decode, context=context)
        assert [scan.found(ids[:t], t, commit=True) for t in range(1, 5)] == [False, False, False, True]
    # the incomplete character reads as U+FFFD in the full decode, and so in the incremental one
    scan = StopScan(("x\ufffd",), byte_decode)
    assert [scan.found(ids[:t], t, commit=True) for t in range(1, 3)] == [False, True]


@pytest.mark.parametrize("mode", ["sequential", "speculative"])
def test_routed_decoding_stops_where_the_full_decode_does(mode: str) -> None:
    """Routed decoding on fakes with a byte-piece vocab: with stop strings, the output is the unstopped output cut
    at the full-decode check's first stop, its text cut before the stop string (blocks, drafts and verification
    included, under greedy decoding and sampling)."""
    slm, llm = FakeBackend(len(PIECES), seed=11, sharpness=0.5, max_length=512), \
        FakeBackend(len(PIECES), seed=12, sharpness=0.5, max_length=512)
    policy, run = RandomPolicy(rate=0.3, seed=5), generate_sequential if mode == "sequential" else generate_speculative
    kw = {} if mode == "sequential" else {"block": BlockConfig(k_min=2, k_max=6)}
    rule = StopRule(frozenset(), byte_decode, 512)
    prompts, n_stopped = [[0, 1], [2], [3, 4]], 0
    for base in (SamplingParams(max_tokens=120), SamplingParams(max_tokens=120, temperature=1.0, seed=3)):
        free = run(slm, llm, policy, prompts, [base] * len(prompts), rule, **kw)
        for key, (prompt, gen) in enumerate(zip(prompts, free)):
            text = byte_decode(gen.token_ids)
            stop = (text[90:93], text[60:62]) if len(text) > 93 else ("ab",)
            want = first_stop(byte_decode, gen.token_ids, stop)
            params = SamplingParams(**{**base.__dict__, "stop": stop})
            (got,) = run(slm, llm, policy, [prompt], [params], rule, stream_keys=[key], **kw)
            n = want or len(gen.token_ids)
            assert got.token_ids == gen.token_ids[:n], f"stopped at {len(got.token_ids)}, the full decode at {want}"
            assert got.finish_reason == (FinishReason.STOP if want else FinishReason.LENGTH)
            assert got.text == cut_at_stop(byte_decode(gen.token_ids[:n]), stop)
            n_stopped += want is not None
    assert n_stopped >= 4, "most outputs must meet their stop strings"


def test_byte_text_scan_equals_full_decode() -> None:
    """The byte-level engine's scan: output bytes after a given prefix (`origin`) in a bytearray, drafts as bytes
    after the committed ones, UTF-8 characters split anywhere."""
    rng = random.Random(1)
    alphabet = [b"a", b" ", b"\xe4", b"\xb8", b"\x80", b"\xf0\x9f\x98\x80", b"\xff"]
    for _ in range(40):
        prefix = b"".join(rng.choice(alphabet) for _ in range(3))
        data = bytearray(prefix)
        for _ in range(400):
            data += rng.choice(alphabet)
        out = bytes(data[len(prefix):]).decode("utf-8", errors="replace")
        stop = (out[rng.randrange(len(out) - 3):][:rng.randint(1, 3)],)
        scan = StopScan(stop, lambda b: bytes(b).decode("utf-8", errors="replace"), origin=len(prefix))
        for end in range(len(prefix) + 1, len(data) + 1):
            drafts = bytes(data[end - 1:end + rng.randint(0, 5)])  # the next bytes, checked before committing
            full = bytes(data[len(prefix):end - 1] + drafts).decode("utf-8", errors="replace")
            assert scan.found(data, end - 1, drafts, commit=False) == any(s in full for s in stop), "a draft check"
            hit = scan.found(data, end, commit=True)
            assert hit == any(s in bytes(data[len(prefix):end]).decode("utf-8", errors="replace") for s in stop)
            if hit:
                break


def test_byte_level_engine_stops_where_the_full_decode_does(long_pair) -> None:
    """The byte-level engine: with a stop string cut from an unstopped output (across pieces), it stops at the
    first piece whose output text holds it, as decoding all the bytes at each piece would."""
    from r2r.router.policies import PolicyKind, make_policy
    from r2r.serving.byte_level.cross_tokenizer import generate_cross
    from r2r.serving.decoding.generation import RoutingMode

    a, b = long_pair
    policy = make_policy(PolicyKind.RANDOM, rate=0.3, seed=2)
    for mode in (RoutingMode.SEQUENTIAL, RoutingMode.SPECULATIVE):
        for seed in range(10):  # the first seed whose output is long enough to cut a stop string from
            base = SamplingParams(max_tokens=40, temperature=1.0, seed=seed)
            (free,) = generate_cross(a, b, policy, ["a"], [base], mode=mode, prompt_as_bytes=True)
            if len(free.pieces) >= 16:
                break
        assert len(free.pieces) >= 16, "an output of 16 pieces or more among ten seeds"
        data = b"".join(free.pieces)
        text = data.decode("utf-8", errors="replace")
        stop = (text[len(text) // 2:len(text) // 2 + 3],)
        ends = [len(b"".join(free.pieces[:k + 1])) for k in range(len(free.pieces))]
        want = next(k + 1 for k, e in enumerate(ends) if stop[0] in data[:e].decode("utf-8", errors="replace"))
        (got,) = generate_cross(a, b, policy, ["a"], [SamplingParams(**{**base.__dict__, "stop": stop})], mode=mode,
                                prompt_as_bytes=True)
        assert got.pieces == free.pieces[:want] and got.finish_reason == FinishReason.STOP
        assert got.text == cut_at_stop(b"".join(free.pieces[:want]).decode("utf-8", errors="replace"), stop)


@pytest.fixture(scope="module")
def long_tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random llama with the testbed tokenizer and room for 4k output tokens."""
    from r2r.serving.backends.hf import HFBackend

    from .conftest import make_tiny_model

    return HFBackend(make_tiny_model(tmp_path_factory.mktemp("long") / "llama", "llama", positions=4200))


@pytest.mark.parametrize("n", [1024, pytest.param(4096, marks=pytest.mark.slow)])  # 4k: minutes on 2 cores
def test_long_decode_with_stop_strings_equals_the_full_decode_check(long_tiny_model, n: int) -> None:
    """An n-token sampled decode of a tiny model (testbed byte-level BPE tokenizer), then the same decode with a
    stop string that first appears across two tokens near its end: it stops exactly where decoding the whole
    output at every token first holds it, and its text is that output's text cut before the stop string."""
    from transformers import AutoTokenizer

    from .conftest import TOKENIZER_DIR

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    rule = StopRule(frozenset(), lambda ids: tok.decode(ids, skip_special_tokens=False), 4200)  # EOS ignored
    base, prompt = SamplingParams(max_tokens=n, temperature=1.0, seed=1), [tok.bos_token_id or 0, 5, 6]
    (free,) = decode(long_tiny_model, [prompt], [base], rule)
    ids = free.token_ids
    assert len(ids) == n
    at = n - 196  # a stop string ending in token `at`, starting in an earlier one, seen nowhere before
    before, upto = rule.decode(ids[:at]), rule.decode(ids[:at + 1])
    added = len(upto) - len(before)
    stop = next(upto[-w:] for w in range(added + 2, added + 40) if upto[-w:] not in before)
    stops = (stop, "never in this output \x00")
    want = first_stop(rule.decode, ids, stops)
    assert want is not None and want <= at + 1
    (got,) = decode(long_tiny_model, [prompt], [SamplingParams(**{**base.__dict__, "stop": stops})], rule)
    assert got.token_ids == ids[:want] and got.finish_reason == FinishReason.STOP, \
        f"stopped after {len(got.token_ids)} tokens; the full-decode check stops after {want}"
    assert got.text == cut_at_stop(rule.decode(ids[:want]), (stop,))
