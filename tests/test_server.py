"""The OpenAI-compatible endpoint, driven by real clients against a server on loopback."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from router.policies import AlwaysLLM, AlwaysSLM
from serving.pair import ModelPair, PairSpec, load_pair
from serving.sampling import SamplingParams
from serving.server import ServeConfig, build_app

MODEL = "r2r-testbed"
QUESTION = "Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?"


@pytest.fixture(scope="module")
def pair(testbed_dirs) -> ModelPair:
    return load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"]), "cpu")


@pytest.fixture(scope="module")
def base_url(pair: ModelPair) -> Iterator[str]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(pair, ServeConfig(port=port, model_name=MODEL)),
                                          host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


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
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "context"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "gpt-9"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "threshold": 3}, 400, "threshold"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "policy": "psychic"}, 400, "policy"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x " * 5000}, 400, "context"),
])
def test_bad_requests_get_openai_errors(base_url: str, body, status: int, fragment: str) -> None:
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else "/v1/chat/completions"
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {"json": body}
    resp = httpx.post(f"{base_url}{path}", **kwargs)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["type"] and fragment in error["message"] + str(error["param"])
    assert httpx.get(f"{base_url}/health").status_code == 200, "the server keeps serving"
