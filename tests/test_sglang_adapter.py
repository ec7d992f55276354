"""The SGLang adapter's request building and response parsing, against response structures taken from the
pinned sglang 0.5.23 source (see serving/backends/sglang.py for the file and function of each shape)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from r2r.serving.backends.sglang import (SGLangConfig, SGLangDevice, SGLangSequence, build_request, parse_draft,
                                     parse_response)

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
    cuda = SGLangConfig("/m", tp_size=2, mem_fraction_static=0.6).engine_kwargs()
    cpu = SGLangConfig("/m", device=SGLangDevice.CPU).engine_kwargs()
    for kwargs in (cuda, cpu):
        unknown = set(kwargs) - serverargs_fields()
        assert not unknown, f"sglang 0.5.23's ServerArgs has no fields {sorted(unknown)}: Engine(**kwargs) would fail"
        assert kwargs["enable_return_hidden_states"] and kwargs["skip_tokenizer_init"] and kwargs["sleep_on_idle"]
    assert cuda["tp_size"] == 2 and cuda["mem_fraction_static"] == 0.6 and cuda["device"] == "cuda"
    assert cpu["device"] == "cpu" and cpu["dtype"] == "float32" and cpu["attention_backend"] == "torch_native"
    assert cpu["disable_cuda_graph"] and cpu["disable_overlap_schedule"] and cpu["max_total_tokens"] > 0
    assert not {"mem_fraction_static", "base_gpu_id", "tp_size"} & set(cpu), "GPU-only fields stay off a CPU engine"
    with pytest.raises(ValueError):
        SGLangConfig("/m", mem_fraction_static=1.5)
    with pytest.raises(ValueError, match="unknown SGLang device"):
        SGLangConfig("/m", device="tpu")
    with pytest.raises(ValueError, match="parallelism"):
        SGLangConfig("/m", device="cpu", tp_size=2)


def test_draft_request_generates_the_block_greedily_past_eos() -> None:
    req = build_request([SGLangSequence([1, 2, 3]), SGLangSequence([4])], [[5], [6, 7]], top_k=5, want_hidden=True,
                        n_drafts=[4, 1])
    assert req["input_ids"] == [[1, 2, 3, 5], [4, 6, 7]] and req["logprob_start_len"] == [3, 1]
    assert req["sampling_params"] == [{"max_new_tokens": 4, "temperature": 0.0, "ignore_eos": True},
                                      {"max_new_tokens": 1, "temperature": 0.0, "ignore_eos": True}]


def test_parse_draft_rows_and_hidden_states_follow_the_drafts() -> None:
    # 3 drafts: output_top_logprobs[j] is the row draft j was chosen from; hidden states: the prefill rows (two
    # recomputed positions, the last one after the last input token), then one per decode step (2)
    out = {"output_ids": [4, 5, 7], "meta_info": {
        "output_top_logprobs": [entry([(-0.1, 4), (-2.5, 2)]), entry([(-0.3, 5), (-1.4, 9)]),
                                entry([(-0.01, 7), (-4.6, 1)])],
        "hidden_states": [[[9.0, 9.1], [0.0, 0.1]], [1.0, 1.1], [2.0, 2.1]],
    }}
    block = parse_draft(out, n=3, vocab=VOCAB, hidden_size=2, want_hidden=True)
    assert block.tokens == [4, 5, 7] and block.out.logits.argmax(-1).tolist() == [4, 5, 7]
    torch.testing.assert_close(block.out.hidden, torch.tensor([[0.0, 0.1], [1.0, 1.1], [2.0, 2.1]]))
    bad = {"output_ids": [2], "meta_info": {"output_top_logprobs": [entry([(-0.1, 4), (-2.5, 2)])]}}
    with pytest.raises(AssertionError, match="argmax"):
        parse_draft(bad, n=1, vocab=VOCAB, hidden_size=2, want_hidden=False)


def test_parse_response_keeps_only_the_positions_asked_for() -> None:
    """rows_at [2, 0]: the row after the last appended token, then the one after the first; [] makes none."""
    out = {"output_ids": [7], "meta_info": {
        "input_top_logprobs": [None, entry([(-0.1, 4), (-2.5, 2)]), entry([(-0.3, 5), (-1.4, 9)])],
        "output_top_logprobs": [entry([(-0.01, 7), (-4.6, 1)])],
        "hidden_states": [[[0.0, 0.1], [1.0, 1.1], [2.0, 2.1]], [3.0, 3.1]],
    }}
    step = parse_response(out, n_new=3, vocab=VOCAB, want_hidden=True, at=[2, 0])
    assert step.logits.argmax(-1).tolist() == [7, 4]
    torch.testing.assert_close(step.hidden, torch.tensor([[2.0, 2.1], [0.0, 0.1]]))
    none = parse_response(out, n_new=3, vocab=VOCAB, want_hidden=True, at=[])
    assert none.logits.shape == (0, VOCAB) and none.hidden.shape == (0, 2)
