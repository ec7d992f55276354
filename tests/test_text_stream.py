"""Incremental detokenization for streams: pushes join into the full decode, each costs O(its new tokens), stop
strings are held back and never sent."""
from __future__ import annotations

import pytest

from r2r.serving.http.text_stream import ByteDetokenizer, TextStream, TokenDetokenizer, token_texts


@pytest.fixture(scope="module")
def tokenizer(testbed_dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(testbed_dirs["slm"])


def test_pushes_join_into_the_full_decode(tokenizer) -> None:
    text = "Ava has 12 apples. Ein Würfel kostet 3 € — 漢字 😀 done.\n    print(x * 3)"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for chunk in (1, 2, 3, 7):
        detok = TokenDetokenizer(tokenizer.decode)
        pieces = [detok.push(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
        assert "".join(pieces) == tokenizer.decode(ids), f"chunks of {chunk}"
        assert not any("\ufffd" in p for p in pieces), "half a character was sent"
    per_token = token_texts(TokenDetokenizer(tokenizer.decode), ids)
    assert len(per_token) == len(ids) and "".join(per_token) == tokenizer.decode(ids)


def test_each_push_decodes_a_bounded_window(tokenizer) -> None:
    """O(new tokens) per chunk: over a long output, the ids decoded in all grow linearly, not quadratically."""
    ids = tokenizer("twelve apples and five more apples " * 60, add_special_tokens=False)["input_ids"]
    decoded = []

    def counting(window: list[int]) -> str:
        decoded.append(len(window))
        return tokenizer.decode(window)

    detok = TokenDetokenizer(counting)
    for t in ids:
        detok.push([t])
    assert len(ids) > 300 and sum(decoded) <= 4 * len(ids), f"{sum(decoded)} ids decoded for {len(ids)} tokens"


def test_bytes_hold_an_incomplete_character() -> None:
    data = "a€b😀".encode()
    detok = ByteDetokenizer()
    assert [detok.push([data[i:i + 1]]) for i in range(len(data))] == ["a", "", "", "€", "b", "", "", "", "😀"]


def test_stop_strings_are_held_and_never_sent() -> None:
    stream = TextStream(("####", "END"))
    sent = [stream.push(t) for t in ("The answer", " is 5.\n#", "#", "##", " 5")]
    assert "".join(sent) == "The answer is 5.\n" and sent[1] == " is 5.\n"
    stream = TextStream(("END",))
    assert stream.push("xEN") == "x" and stream.push("D!") == "" and stream.finish("x") == ""
    stream = TextStream(("END",))
    assert stream.push("xEN") == "x" and stream.push("x") == "ENx"
    assert stream.finish("xENxyz") == "yz", "the end: whatever the output's text holds past what was sent"


def test_invalid_bytes_are_sent_as_the_full_decode_has_them() -> None:
    """Tokens that are bytes: an invalid sequence (a lone continuation byte, a truncated character) decodes to U+FFFD
    in the full text, and the stream sends it once the next characters show it cannot complete."""
    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    data = list(b"ok \x80 then \xe6\xbc x " + "漢字".encode() + b" \xff\xfe end")
    for chunk in (1, 2, 3, 5):
        detok = TokenDetokenizer(decode)
        joined = "".join(detok.push(data[i:i + chunk]) for i in range(0, len(data), chunk))
        assert joined == decode(data), f"chunks of {chunk}"
