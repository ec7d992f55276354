"""The SGLang adapter's request building and response parsing, against response structures taken from the
pinned sglang 0.5.23 source (see serving/backends/sglang.py for the file and function of each shape)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from serving.backends.sglang import SGLangConfig, SGLangSequence, build_request, parse_response

VOCAB = 10


def entry(pairs: list[tuple[float, int]]) -> list[tuple[float, int, None]]:
    """One position of input/output_top_logprobs: (logprob, token_id, text) tuples (text None without
    return_text_in_logprobs, `detokenize_logprob_tokens`)."""
    return [(lp, tok, None) for lp, tok in pairs]


def test_build_request_sends_full_lists_and_bounds_the_prefix_match() -> None:
    seqs = [SGLangSequence([1, 2, 3]), SGLangSequence([])]
    req = build_request(seqs, [[4, 5], [6]], top_k=5, want_hidden=True)
    assert req["input_ids"] == [[1, 2, 3, 4, 5], [6]]
    assert req["logprob_start_len"] == [3, 0], "recompute exactly the appended positions"
    assert req["top_logprobs_num"] == [5, 5] and req["return_logprob"] == [True, True]
    assert all(sp == {"max_new_tokens": 1, "temperature": 0.0} for sp in req["sampling_params"])
    assert req["return_hidden_states"] is True


def test_parse_response_rows_follow_the_appended_positions() -> None:
    # 3 appended tokens: input_top_logprobs[0] is the distribution *of* the first appended token (ignored),
    # [1] and [2] are the rows after appended tokens 0 and 1, output_top_logprobs[0] the row after token 2.
    out = {"output_ids": [7], "meta_info": {
        "input_top_logprobs": [None, entry([(-0.1, 4), (-2.5, 2)]), entry([(-0.3, 5), (-1.4, 9)])],
        "output_top_logprobs": [entry([(-0.01, 7), (-4.6, 1)])],
        "hidden_states": [[[0.0, 0.1], [1.0, 1.1], [2.0, 2.1]], [3.0, 3.1]],
    }}
    step = parse_response(out, n_new=3, vocab=VOCAB, want_hidden=True)
    assert step.logits.shape == (3, VOCAB)
    assert step.logits.argmax(-1).tolist() == [4, 5, 7]
    assert step.logits[0, 2].item() == pytest.approx(-2.5) and math.isinf(step.logits[0, 0].item())
    torch.testing.assert_close(step.hidden, torch.tensor([[0.0, 0.1], [1.0, 1.1], [2.0, 2.1]]))


def serverargs_fields() -> set[str]:
    """ServerArgs field names of the pinned sglang, extracted from its wheel (see the data file's header)."""
    path = Path(__file__).parent / "data" / "sglang_0.5.23_serverargs_fields.txt"
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def test_engine_kwargs_are_serverargs_fields() -> None:
    kwargs = SGLangConfig("/m", tp_size=2, mem_fraction_static=0.6).engine_kwargs()
    unknown = set(kwargs) - serverargs_fields()
    assert not unknown, f"sglang 0.5.23's ServerArgs has no fields {sorted(unknown)}: Engine(**kwargs) would fail"
    assert kwargs["tp_size"] == 2 and kwargs["enable_return_hidden_states"] and kwargs["skip_tokenizer_init"]
    with pytest.raises(ValueError):
        SGLangConfig("/m", mem_fraction_static=1.5)
