"""The OpenAI-compatible endpoint, driven by real clients against a server on loopback."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from r2r.router.policies import AlwaysLLM, AlwaysSLM
from r2r.serving.pair import ModelPair, PairSpec, load_pair
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.http.server import ServeConfig, build_app

MODEL = "r2r-testbed"
QUESTION = "Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?"


@pytest.fixture(scope="module")
def pair(testbed_dirs) -> ModelPair:
    return load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"]), "cpu")


_SCHEDULERS: dict[str, object] = {}  # a running server's url -> its app's scheduler


@contextlib.contextmanager
def running_server(pair: ModelPair, **cfg) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(pair, ServeConfig(port=port, model_name=MODEL, **cfg))
    _SCHEDULERS[f"http://127.0.0.1:{port}"] = app.state.service.scheduler
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(pair: ModelPair) -> Iterator[str]:
    with running_server(pair) as url:
        yield url


def test_chat_with_openai_client_matches_direct_decoding(base_url: str, pair: ModelPair) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [MODEL]
    for policy, direct_policy in (("slm", AlwaysSLM()), ("llm", AlwaysLLM())):
        resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                              temperature=0, max_tokens=80, extra_body={"policy": policy})
        ids = pair.encode_chat([{"role": "user", "content": QUESTION}])
        direct = pair.generate(direct_policy, [ids], [SamplingParams(max_tokens=80)])[0]
        assert resp.choices[0].message.content == direct.text
        assert resp.choices[0].finish_reason == direct.finish_reason.value
        usage = resp.usage.model_dump()
        assert usage["completion_tokens"] == len(direct.token_ids)
        assert usage["prompt_tokens"] == len(ids)
        assert usage["llm_tokens"] == (len(direct.token_ids) if policy == "llm" else 0)


def test_completions_and_routing_extras(base_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    resp = client.completions.create(model=MODEL, prompt="<|user|>\n" + QUESTION + "<|end|>\n<|assistant|>\n",
                                     max_tokens=40, temperature=0,
                                     extra_body={"policy": "random", "llm_share": 0.5})
    usage = resp.usage.model_dump()
    assert usage["completion_tokens"] > 0 and 0 < usage["llm_tokens"] < usage["completion_tokens"]
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}


@pytest.mark.parametrize("body,status,fragment", [
    ("{not json", 400, ""),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": "hello"}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "context"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "gpt-9"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "threshold": 3}, 400, "threshold"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "policy": "psychic"}, 400, "policy"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "mode": "speculative"},
     400, "sequential"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, 400, "logprobs"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 50},
     400, "top_logprobs"),
    ({"model": MODEL, "prompt": "x " * 5000}, 400, "context"),
    ({"model": MODEL, "prompt": "Ava", "exact_prompt_boundary": True, "logprobs": 1}, 400, "exact_prompt_boundary"),
    ({"model": MODEL, "prompt": "Ava", "temperature": 0.7, "seed": 2**64}, 400, "seed"),
    ({"model": MODEL, "prompt": "Ava", "seed": -2**63 - 1}, 400, "seed"),
    ({"model": MODEL, "prompt": "Ava", "temperature": 1e-300}, 400, "temperature"),
    ({"model": MODEL, "prompt": "Ava", "top_k": 2**64}, 400, "top_k"),
    ({"model": MODEL, "prompt": "Ava", "max_tokens": 2**63}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "Ava", "n": 2**64}, 400, "n"),
    ({"model": MODEL, "prompt": "Ava", "logprobs": 2**64}, 400, "logprobs"),
    ({"model": MODEL, "prompt": "Ava", "timeout": -1}, 400, "timeout"),
    ({"model": MODEL, "prompt": "Ava", "stream_options": {"include_usage": "maybe"}}, 400, "stream_options"),
    ('{"model": "%s", "prompt": "Ava", "threshold": NaN}' % MODEL, 400, "threshold"),
    ('{"model": "%s", "prompt": "Ava", "temperature": Infinity}' % MODEL, 400, "temperature"),
])
def test_bad_requests_get_openai_errors(base_url: str, body, status: int, fragment: str) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {"json": body}
    resp = httpx.post(f"{base_url}{path}", **kwargs)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["type"] and fragment in error["message"] + str(error["param"])
    assert httpx.get(f"{base_url}/health").status_code == 200, "the server keeps serving"


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} missing")


def test_metrics_count_what_the_responses_report(base_url: str) -> None:
    names = ("r2r_requests_finished_total", "r2r_tokens_total", "r2r_llm_tokens_total", "r2r_steps_total")
    before = {n: metric(base_url, n) for n in names}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Cara has 7 coins. How many coins?"}],
            "temperature": 0, "max_tokens": 24, "mode": "sequential", "policy": "random", "llm_share": 0.5}
    usage = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120).json()["usage"]
    delta = {n: metric(base_url, n) - before[n] for n in names}
    assert delta["r2r_requests_finished_total"] == 1
    assert delta["r2r_tokens_total"] == usage["completion_tokens"] > 0
    assert delta["r2r_llm_tokens_total"] == usage["llm_tokens"] > 0
    assert delta["r2r_steps_total"] == usage["completion_tokens"]  # sequential: one token per step


def test_streaming_matches_non_streaming(base_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    messages = [{"role": "user", "content": QUESTION}]
    full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=60)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=60,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    raw = httpx.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": "Ava has", "max_tokens": 5,
                                                         "stream": True}).text
    assert raw.rstrip().endswith("data: [DONE]")


def test_concurrent_streams_with_disconnects(base_url: str) -> None:
    """32 concurrent streaming clients, a third disconnect after a few chunks: the others get exactly their
    lone greedy answer, nothing leaks, the server keeps serving."""
    from concurrent.futures import ThreadPoolExecutor

    from r2r.testbed.splits import heldout

    questions = [p.prompt for p in heldout("math", "validation", 16) + heldout("code", "validation", 16)]

    def body(q: str, stream: bool) -> dict:
        return {"model": MODEL, "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 40,
                "stream": stream}

    alone = [httpx.post(f"{base_url}/v1/chat/completions", json=body(q, False), timeout=120).json()
             ["choices"][0]["message"]["content"] for q in questions]

    def client(i: int) -> str | None:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body(questions[i], True), timeout=120) as r:
            text = ""
            for n, line in enumerate(r.iter_lines()):
                if i % 3 == 0 and n >= 3:
                    return None  # disconnect midway
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    text += delta.get("content") or ""
            return text

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(client, range(32)))
    for i, (got, want) in enumerate(zip(results, alone)):
        if i % 3:
            assert got == want, f"client {i} got a different answer under load"
    deadline = time.monotonic() + 10
    while metric(base_url, "r2r_running_requests") or metric(base_url, "r2r_slm_open_sequences"):
        assert time.monotonic() < deadline, "sequences leaked"
        time.sleep(0.1)
    assert metric(base_url, "r2r_llm_open_sequences") == 0
    assert metric(base_url, "r2r_active_sequences") == 0
    assert httpx.get(f"{base_url}/health").status_code == 200


def test_api_key_and_queue_limit(pair: ModelPair) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from r2r.serving.http.scheduler import SchedulerConfig

    with running_server(pair, api_key="sekrit", scheduler=SchedulerConfig(max_running=1, max_queue=1)) as url:
        body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 60}
        assert httpx.get(f"{url}/health").status_code == 200, "/health needs no key"
        denied = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/metrics").status_code == 401
        auth = {"authorization": "Bearer sekrit"}
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth,
                                                       timeout=120).status_code, range(8)))
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
        big = httpx.post(f"{url}/v1/completions", content=b"x" * (2 << 20), headers=auth)
        assert big.status_code == 413


def test_worker_metadata_for_sglang_router(base_url: str, pair: ModelPair) -> None:
    """`/model_info` and `/server_info` (and their `/get_*` aliases) carry what sglang-router registers a worker
    by: the served model id the OpenAI routes accept, and a tokenizer path that loads the pair's tokenizer."""
    from transformers import AutoTokenizer

    info = httpx.get(f"{base_url}/model_info").json()
    assert info == httpx.get(f"{base_url}/get_model_info").json()
    assert info["served_model_name"] == MODEL and info["is_generation"] is True
    assert info["vocab_size"] == pair.slm.vocab_size and info["max_context_length"] == pair.context_length
    assert AutoTokenizer.from_pretrained(info["tokenizer_path"]).encode(QUESTION) == pair.tokenizer.encode(QUESTION)
    server = httpx.get(f"{base_url}/server_info").json()
    assert server == httpx.get(f"{base_url}/get_server_info").json()
    assert {k: server[k] for k in info} == info and server["max_running_requests"] >= 1


def test_n_choices(base_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                          temperature=1.0, seed=5, max_tokens=30, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    lone = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                           temperature=1.0, seed=5 + i, max_tokens=30) for i in range(3)]
    assert [c.message.content for c in resp.choices] == [r.choices[0].message.content for r in lone], \
        "choice i samples with seed + i"
    assert resp.usage.completion_tokens == sum(r.usage.completion_tokens for r in lone)
    assert resp.usage.prompt_tokens == lone[0].usage.prompt_tokens


def test_cross_tokenizer_pair_serves_and_streams(testbed_dirs, tmp_path) -> None:
    """An LLM with another tokenizer behind the same API: direct decoding, streaming and usage agree."""
    import torch
    from openai import OpenAI
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_x = AutoTokenizer.from_pretrained(testbed_dirs["slm"].parent / "tokenizer-x")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok_x), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=tok_x.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tok_x.save_pretrained(tmp_path)
    cross = load_pair(PairSpec("x", testbed_dirs["slm"], tmp_path, testbed_dirs["router"]), "cpu")
    assert cross.cross
    messages = [{"role": "user", "content": QUESTION}]
    ids = cross.encode_chat(messages)
    with running_server(cross) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40,
                                              extra_body={"llm_share": 0.3})
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40,
                                                     extra_body={"llm_share": 0.3}, stream=True))
        direct = cross.generate(cross.policy("learned", llm_share=0.3), [ids], [SamplingParams(max_tokens=40)])[0]
        metrics = httpx.get(f"{url}/metrics").text
    assert full.choices[0].message.content == direct.text
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == direct.text
    assert full.usage.llm_tokens == direct.stats.llm_tokens > 0
    assert "r2r_slm_open_sequences 0" in metrics and "r2r_llm_open_sequences 0" in metrics


def test_logprobs_match_the_writer_distribution(base_url: str, pair: ModelPair) -> None:
    """Chat and completions log-probs, streamed and not, against an uncached forward pass of the model."""
    import torch
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    messages = [{"role": "user", "content": QUESTION}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12,
                                          logprobs=True, top_logprobs=3, extra_body={"policy": "llm"})
    content = resp.choices[0].logprobs.content
    assert "".join(c.token for c in content) == resp.choices[0].message.content
    ids = pair.encode_chat(messages)
    out = pair.generate(AlwaysLLM(), [ids], [SamplingParams(max_tokens=12)])[0].token_ids
    with torch.inference_mode():
        logits = pair.llm.model(input_ids=torch.tensor([ids + out])).logits[0, len(ids) - 1:-1]
    want = torch.log_softmax(logits.float(), -1)
    for k, entry in enumerate(content):
        assert entry.logprob == pytest.approx(float(want[k, out[k]]), abs=1e-4)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.logprob - 1e-6
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12,
                                                 logprobs=True, stream=True, extra_body={"policy": "llm"}))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-6)
    comp = httpx.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": "Ava has", "max_tokens": 5,
                                                          "temperature": 0, "logprobs": 2}).json()
    block = comp["choices"][0]["logprobs"]
    assert "".join(block["tokens"]) == comp["choices"][0]["text"]
    assert all(len(t) == 2 for t in block["top_logprobs"]) and block["text_offset"][0] == 0


def test_exact_prompt_boundary_continues_inside_a_token(base_url: str, pair: ModelPair) -> None:
    """The prompt ends in "Ava ", whose space the model would write as part of its next token (" starts").
    Conditioned on the bytes exactly, the SLM continues its own greedy answer; the default (re-encoded
    prompt, a token boundary after the space) does not. Streamed and not, equal to the byte-level decoder."""
    from openai import OpenAI

    from r2r.serving.byte_level.cross_tokenizer import generate_cross

    ids = pair.encode_chat([{"role": "user", "content": QUESTION}])
    answer = pair.generate(AlwaysSLM(), [ids], [SamplingParams(max_tokens=40)])[0].text
    assert answer.startswith("Ava starts")
    prompt = pair.tokenizer.decode(ids, skip_special_tokens=False) + "Ava "
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    body = {"policy": "slm", "exact_prompt_boundary": True}
    exact = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, extra_body=body)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, extra_body=body, stream=True) if c.choices)
    naive = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                      extra_body={"policy": "slm"})
    (direct,) = generate_cross(*pair.byte_models(), AlwaysSLM(), [prompt], [SamplingParams(max_tokens=12)],
                               prompt_as_bytes=True)
    text = exact.choices[0].text
    assert text == streamed == direct.text and answer.startswith("Ava " + text)
    assert not answer.startswith("Ava " + naive.choices[0].text)
    assert metric(base_url, "r2r_active_sequences") == 0


def _post_json(url: str, raw: str, timeout: float = 600) -> httpx.Response:
    return httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=timeout)


def test_good_requests_complete_beside_bad_ones(base_url: str) -> None:
    """32 concurrent greedy requests with 8 bad ones interleaved (each a field out of range, as a client might send):
    every good one gets exactly its lone answer, every bad one a 4xx naming its field, nothing fails."""
    from concurrent.futures import ThreadPoolExecutor

    from r2r.testbed.splits import heldout

    questions = [p.prompt for p in heldout("math", "validation", 16) + heldout("code", "validation", 16)]
    good = [json.dumps({"model": MODEL, "messages": [{"role": "user", "content": q}], "temperature": 0,
                        "max_tokens": 24}) for q in questions]
    base = '{"model": "%s", "messages": [{"role": "user", "content": "Cara has 7 coins."}], "max_tokens": 24, ' % MODEL
    bad = [base + tail for tail in ('"temperature": 0.7, "seed": 18446744073709551616}', '"temperature": 1e-300}',
                                    '"top_k": 18446744073709551616}', '"threshold": NaN}', '"llm_share": Infinity}',
                                    '"max_tokens": 9223372036854775808}', '"n": 18446744073709551617}',
                                    '"top_p": -0.0}')]
    url = f"{base_url}/v1/chat/completions"
    alone = [_post_json(url, body).json()["choices"][0]["message"]["content"] for body in good]
    failed_before = metric(base_url, "r2r_requests_failed_total")
    order = [kj for i in range(8) for kj in [("good", 4 * i + k) for k in range(4)] + [("bad", i)]]
    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        replies = list(pool.map(lambda kj: _post_json(url, (good if kj[0] == "good" else bad)[kj[1]]), order))
    got = [r for r, (kind, _) in zip(replies, order) if kind == "good"]
    refused = [r for r, (kind, _) in zip(replies, order) if kind == "bad"]
    for i, (r, want) in enumerate(zip(got, alone)):
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want, f"good request {i}: {r.text}"
    for r, body in zip(refused, bad):
        assert 400 <= r.status_code < 500 and r.json()["error"]["param"], f"{body} -> {r.status_code} {r.text}"
    assert metric(base_url, "r2r_requests_failed_total") == failed_before


def test_streams_carry_what_the_answer_carries(base_url: str) -> None:
    """32 concurrent streams with r2r_token_info: each stream's chunks, joined, equal the non-streaming answer's
    text, token ids, per-token texts, sources and scores exactly (random routing with a seed: the same decisions for
    the same request, scores that batching cannot move)."""
    from concurrent.futures import ThreadPoolExecutor

    from r2r.testbed.splits import heldout

    questions = [p.prompt for p in heldout("math", "validation", 16) + heldout("code", "validation", 16)]

    def body(i: int, stream: bool) -> dict:
        return {"model": MODEL, "messages": [{"role": "user", "content": questions[i]}], "temperature": 0,
                "max_tokens": 40, "policy": "random", "llm_share": 0.3, "seed": 1000 + i, "r2r_token_info": True,
                "stream": stream}

    answers = [httpx.post(f"{base_url}/v1/chat/completions", json=body(i, False), timeout=600).json()["choices"][0]
               for i in range(32)]

    def stream(i: int) -> dict:
        joined = {"content": "", "tokens": [], "token_ids": [], "sources": [], "scores": []}
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body(i, True), timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choice = json.loads(line[6:])["choices"][0]
                    joined["content"] += choice["delta"].get("content") or ""
                    for k in ("tokens", "token_ids", "sources", "scores"):
                        joined[k] += choice.get("r2r", {}).get(k, [])
        return joined

    with ThreadPoolExecutor(max_workers=32) as pool:
        streams = list(pool.map(stream, range(32)))
    routed = 0
    for i, (got, want) in enumerate(zip(streams, answers)):
        assert got["content"] == want["message"]["content"], f"stream {i}: text"
        for k in ("tokens", "token_ids", "sources", "scores"):
            assert got[k] == want["r2r"][k], f"stream {i}: {k} differ from the non-streaming answer's"
        assert "".join(want["r2r"]["tokens"]) == want["message"]["content"]
        routed += want["r2r"]["sources"].count("llm")
    assert routed > 0, "some tokens must be routed for sources to be checked"


def test_abandoned_requests_free_their_slots(pair: ModelPair) -> None:
    """Disconnect storm, non-streaming: 24 clients (8 running, 16 queued) give up while the LLM writes 400 tokens
    each. Every request is cancelled (none runs to its end), nothing stays running, queued or open."""
    from concurrent.futures import ThreadPoolExecutor

    from r2r.serving.http.scheduler import SchedulerConfig

    with running_server(pair, scheduler=SchedulerConfig(max_running=8)) as url:
        body = {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 400,
                "mode": "sequential", "policy": "llm"}
        before = {n: metric(url, n) for n in ("r2r_requests_cancelled_total", "r2r_requests_finished_total")}

        def client(_: int) -> str:
            try:
                httpx.post(f"{url}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
            except httpx.ReadTimeout:
                return "gave up"
            return "answered"

        with ThreadPoolExecutor(max_workers=24) as pool:
            outcomes = list(pool.map(client, range(24)))
        gone = time.monotonic()
        while metric(url, "r2r_running_requests") or metric(url, "r2r_queue_depth"):
            assert time.monotonic() - gone < 300, "abandoned requests still hold slots (300 s: a hang, not slowness)"
            time.sleep(0.05)
        drained = time.monotonic() - gone
        print(f"non-streaming storm: {outcomes.count('gave up')} clients gave up; 0 running and 0 queued "
              f"{drained:.2f} s after the last one")
        assert outcomes.count("gave up") == 24
        assert metric(url, "r2r_requests_cancelled_total") - before["r2r_requests_cancelled_total"] == 24
        assert metric(url, "r2r_requests_finished_total") == before["r2r_requests_finished_total"], \
            "an abandoned request ran to its end"
        for gauge in ("r2r_active_sequences", "r2r_slm_open_sequences", "r2r_llm_open_sequences"):
            assert metric(url, gauge) == 0, gauge
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_deadlines_close_and_optional_model(pair: ModelPair) -> None:
    """A request past its deadline is a 408, streamed or not; closing the scheduler answers what waits with 503; a
    request without `model` gets the served one."""
    from concurrent.futures import ThreadPoolExecutor

    with running_server(pair, request_timeout_s=600) as url:
        long = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 400, "mode": "sequential",
                "policy": "llm", "temperature": 0}
        late = httpx.post(f"{url}/v1/chat/completions", json=long | {"timeout": 0.001}, timeout=600)
        assert late.status_code == 408 and late.json()["error"]["code"] == "deadline_exceeded", late.text
        streamed = httpx.post(f"{url}/v1/chat/completions", json=long | {"timeout": 0.001, "stream": True},
                              timeout=600).text
        assert "deadline_exceeded" in streamed
        plain = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                              "max_tokens": 4}, timeout=600)
        assert plain.status_code == 200 and plain.json()["model"] == MODEL
        assert metric(url, "r2r_requests_expired_total") == 2
        with ThreadPoolExecutor(max_workers=3) as pool:
            waiting = [pool.submit(httpx.post, f"{url}/v1/chat/completions", json=long, timeout=600) for _ in range(3)]
            while metric(url, "r2r_running_requests") < 3:
                time.sleep(0.05)
            _SCHEDULERS[url].close()
            replies = [w.result() for w in waiting]
        assert [r.status_code for r in replies] == [503] * 3, [r.text for r in replies]
        assert all(r.json()["error"]["code"] == "shutting_down" for r in replies)


def test_guard_key_body_limit_and_open_paths(pair: ModelPair) -> None:
    """The key is needed everywhere but /health and the playground page; a body is limited by the bytes that arrive,
    with or without a Content-Length."""
    with running_server(pair, api_key="sekrit", max_body_bytes=1000) as url:
        assert httpx.get(f"{url}/").status_code == 200 and httpx.get(f"{url}/health").status_code == 200
        for key in ("sekriT", "sekrit-and-more", "s"):
            assert httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 401
        auth = {"authorization": "Bearer sekrit", "content-type": "application/json"}
        assert httpx.get(f"{url}/v1/models", headers=auth).status_code == 200

        def chunked():
            yield b'{"prompt": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'", "max_tokens": 2}'

        big = httpx.post(f"{url}/v1/completions", content=chunked(), headers=auth)
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        small = httpx.post(f"{url}/v1/completions", content=iter([b'{"prompt": "Ava", ', b'"max_tokens": 2}']),
                           headers=auth)
        assert small.status_code == 200, small.text


def test_a_bad_router_fails_at_start(pair: ModelPair, tmp_path) -> None:
    """Loading happens before serving: a router that cannot load is an error from build_app (r2r serve: exit 2)."""
    import dataclasses
    import subprocess
    import sys

    (tmp_path / "router.json").write_text("{not json")
    (tmp_path / "router.safetensors").write_bytes(b"")
    broken = dataclasses.replace(pair, spec=dataclasses.replace(pair.spec, router=tmp_path), _router=None)
    with pytest.raises(ValueError):
        build_app(broken, ServeConfig(model_name=MODEL))
    proc = subprocess.run([sys.executable, "-m", "r2r", "serve", "--router", str(tmp_path / "nowhere"), "--port",
                           "1"], capture_output=True, text=True, timeout=None)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("r2r: error: no router"), \
        proc.stderr[-2000:]


def test_lifespan_closes_the_scheduler_and_sglang_engines_are_shut_down(pair: ModelPair) -> None:
    """The app's lifespan (not the deprecated on_event) closes its scheduler when the server stops; `r2r serve` stops
    SGLang engines on exit; `--api-key`'s help names the open paths."""
    from types import SimpleNamespace

    from r2r.cli import build_parser
    from r2r.commands.serve import shutdown_backends
    from r2r.serving.http.scheduler import Closed, Ticket

    with running_server(pair) as url:
        scheduler = _SCHEDULERS[url]
    with pytest.raises(Closed):
        scheduler.submit(Ticket([1], SamplingParams(), AlwaysSLM(), None, lambda: None))

    class Engine:
        stopped = 0

        def shutdown(self) -> None:
            self.stopped += 1

    engines = SimpleNamespace(slm=Engine(), llm=Engine())
    shutdown_backends(engines, "hf")
    assert engines.slm.stopped == engines.llm.stopped == 0
    shutdown_backends(engines, "sglang")
    assert engines.slm.stopped == engines.llm.stopped == 1
    serve_help = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert "/health and the playground page /" in " ".join(serve_help.split())
