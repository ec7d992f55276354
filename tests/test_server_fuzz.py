"""The server never answers 5xx to a client's bad input: seeded random and mutated bodies against every endpoint
of a running server (tiny models, so generations are cheap); every answer is 2xx or 4xx, every 4xx an
OpenAI-shaped error, and the server is healthy afterwards. Values include integers at and past 2**63 and 2**64
in every numeric field, NaN, Infinity and -0.0 (as Python's JSON parser lets them through), very long strings
and arrays, and duplicate keys."""
from __future__ import annotations

import json
import random

import httpx
import pytest

from r2r.serving.pair import PairSpec, load_pair
from tests.test_server import running_server

N_REQUESTS = 400
MODEL = "r2r-testbed"
CHAT = {"model": MODEL, "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": "What is 2 plus 3?"}]}
COMPLETION = {"model": MODEL, "max_tokens": 2, "prompt": "2 plus 3 is"}
FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
          "stream", "policy", "threshold", "llm_share", "mode", "logprobs", "top_logprobs", "messages", "prompt",
          "exact_prompt_boundary", "r2r_token_info", "stream_options", "timeout"]
EDGE_INTS = [2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**64, 2**64 + 1, -2**63, -2**63 - 1, -2**64, 10**30, -1, 0]
SPECIAL_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e308]


def random_text(rng: random.Random) -> str:
    pool = ["a", " ", "\n", "\x00", "é", "漢", "😀", "\ufffd", "\udcff", "\ud800", "\u202e", "####", "<|im_end|>"]
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["none", "bool", "int", "big", "neg", "float", "nan", "edge", "special", "text", "list", "dict", "long",
             "long_list"]
    kind = rng.choice(kinds if depth < 3 else kinds[:10])
    make = {"none": lambda: None, "bool": lambda: rng.random() < 0.5, "int": lambda: rng.randint(0, 10),
            "big": lambda: 10 ** rng.randint(6, 30), "neg": lambda: -rng.randint(1, 10 ** 6),
            "float": lambda: rng.uniform(-3, 3), "nan": lambda: float("nan"), "text": lambda: random_text(rng),
            "long": lambda: "x" * rng.randint(1000, 200_000), "edge": lambda: rng.choice(EDGE_INTS),
            "special": lambda: rng.choice(SPECIAL_FLOATS),
            "long_list": lambda: [rng.choice([1, "a", None, 2**64])] * rng.randint(1000, 50_000),
            "list": lambda: [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            "dict": lambda: {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}}
    return make[kind]()


def mutated(rng: random.Random, base: dict) -> dict:
    body = json.loads(json.dumps(base))
    for _ in range(rng.randint(1, 3)):
        op, field = rng.random(), rng.choice(FIELDS)
        if op < 0.1:  # a field the API does not know (OpenAI clients send newer ones)
            body[rng.choice(["user", "presence_penalty", "tools", "response_format", random_text(rng)])] = \
                random_value(rng)
        elif op < 0.2:
            body.pop(field, None)
        elif op < 0.35 and "messages" in body:
            body["messages"] = [{"role": rng.choice(["user", "system", "assistant", "tool", 3]),
                                 "content": rng.choice([random_text(rng), random_value(rng)])}
                                for _ in range(rng.randint(0, 3))]
        else:
            body[field] = random_value(rng)
    for limit in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(limit), int) and body[limit] > 64:
            body[limit] = rng.choice([body[limit], 8])  # keep most valid generations short
    return body


def request(rng: random.Random) -> tuple[str, str, bytes | None]:
    r = rng.random()
    if r < 0.05:
        return "GET", rng.choice(["/health", "/metrics", "/v1/models", "/v1/nope", "/"]), None
    path = rng.choice(["/v1/chat/completions", "/v1/completions"])
    if r < 0.12:  # not JSON, or JSON that is not an object, or nested too deep
        raw = rng.choice([b"{", b"\xff\xfe", b"[]", b"null", b"42", b'"text"', b"[" * 2000 + b"]" * 2000,
                          b'{"model": "x", "messages": [' + b"[" * 500 + b"]" * 500 + b"]}"])
        return "POST", path, raw
    base = CHAT if path.endswith("chat/completions") else COMPLETION
    text = json.dumps(mutated(rng, base), allow_nan=True)  # lone surrogates are escaped
    if r < 0.2:  # a key given twice (the parser keeps the last)
        text = text[:-1] + f', "{rng.choice(FIELDS)}": {json.dumps(random_value(rng), allow_nan=True)}}}'
    return "POST", path, text.encode()


@pytest.fixture(scope="module")
def base_url(tiny_models):
    pair = load_pair(PairSpec("tiny", tiny_models["llama"], tiny_models["llama_b"]), "cpu")
    with running_server(pair, default_max_tokens=8) as url:  # a body without max_tokens: short too
        yield url


def test_no_5xx_for_any_client_input(base_url: str) -> None:
    rng = random.Random(1234)
    seen: dict[int, int] = {}
    with httpx.Client(base_url=base_url, timeout=600) as client:  # a hang guard, not a budget
        for i in range(N_REQUESTS):
            method, path, body = request(rng)
            resp = client.request(method, path, content=body, headers={"content-type": "application/json"})
            seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
            assert resp.status_code < 500, f"request {i} {method} {path} {body[:300]!r} -> {resp.status_code} {resp.text[:300]}"
            if resp.status_code >= 400:
                err = resp.json()["error"]
                assert isinstance(err["message"], str) and err["message"] and "type" in err, resp.text[:300]
        assert client.get("/health").json().get("status") == "ok"
    print(f"fuzz: {N_REQUESTS} requests by status code: {dict(sorted(seen.items()))}")
    assert seen.get(200, 0) > 20 and sum(n for code, n in seen.items() if 400 <= code < 500) > 100, seen


def test_lone_surrogate_is_a_400_naming_the_field(base_url: str) -> None:
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "\udcff"}]})  # valid JSON: "\\udcff"
    resp = httpx.post(f"{base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "messages.0.content" in resp.json()["error"]["param"], resp.text
    resp = httpx.post(f"{base_url}/v1/completions", content=json.dumps({**COMPLETION, "prompt": "a\ud800b"}),
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt", resp.text
