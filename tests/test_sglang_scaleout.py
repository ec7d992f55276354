"""The scale-out recipe, run: two `r2r serve` workers behind `sglang-router` (PyPI), the `openai` client through
the router, requests spread over both workers. The workers are the HF backend's (SGLang engines behind them change
nothing the router sees, and four engines do not fit this machine beside the shared ones); the router runs from
.venv-sglang, where `make test-sglang` installs it.

What the router asks of a worker: `/health` (its health checks), then `/model_info` and `/server_info` (with
`/get_model_info` / `/get_server_info` as fallbacks) for metadata. r2r's server has `/health` and the OpenAI
routes, and `/model_info` / `/server_info` in SGLang's shapes, so the router registers each worker under the
served model id (without them it would register "unknown" and route all the same)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_sglang_serve import free_port, r2r_command, stop, wait_healthy

pytestmark = [pytest.mark.sglang, pytest.mark.sglang_own_engines]

QUESTION = "Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?"
START_S = 600


def requests_served(url: str) -> int:
    import httpx

    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return int(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("r2r_requests_total ")))


def test_two_workers_behind_sglang_router(tmp_path: Path) -> None:
    import httpx
    from openai import OpenAI

    import sglang_router  # noqa: F401  (make test-sglang installs it; a missing router is a failure here)

    procs, logs, workers = [], [], []
    try:
        for k in range(2):
            port, log = free_port(), tmp_path / f"worker{k}.log"
            with log.open("w") as sink:
                procs.append(subprocess.Popen(r2r_command("serve", "--pair", "testbed", "--port", str(port),
                                                          "--max-running", "4"),
                                              stdout=sink, stderr=subprocess.STDOUT, start_new_session=True))
            logs.append(log)
            workers.append(f"http://127.0.0.1:{port}")
        for url in workers:
            wait_healthy(url, procs, logs, START_S)
        port, log = free_port(), tmp_path / "router.log"
        with log.open("w") as sink:
            procs.append(subprocess.Popen([sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
                                           "--port", str(port), "--worker-urls", *workers, "--policy", "round_robin"],
                                          stdout=sink, stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
        router = f"http://127.0.0.1:{port}"
        wait_healthy(router, procs, logs, START_S)
        deadline = time.monotonic() + START_S
        while sum(w["is_healthy"] for w in httpx.get(f"{router}/workers", timeout=10).json()["workers"]) < 2:
            assert time.monotonic() < deadline, f"the router did not take both workers:\n{log.read_text()[-3000:]}"
            time.sleep(2)
        registered = httpx.get(f"{router}/workers", timeout=10).json()["workers"]
        assert {w["model_id"] for w in registered} == {"r2r-testbed"}, registered

        client = OpenAI(base_url=f"{router}/v1", api_key="none")
        direct = OpenAI(base_url=f"{workers[0]}/v1", api_key="none")
        messages = [{"role": "user", "content": QUESTION}]
        want = direct.chat.completions.create(model="r2r-testbed", messages=messages, max_tokens=80,
                                              temperature=0).choices[0].message.content
        before = [requests_served(url) for url in workers]
        texts = [client.chat.completions.create(model="r2r-testbed", messages=messages, max_tokens=80,
                                                temperature=0).choices[0].message.content for _ in range(4)]
        stream = client.chat.completions.create(model="r2r-testbed", messages=messages, max_tokens=80, temperature=0,
                                                stream=True)
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        assert texts == [want] * 5, "through the router, streaming or not: the worker's own greedy answer"
        served = [requests_served(url) - b for url, b in zip(workers, before)]
        assert sum(served) == 5 and min(served) >= 2, f"round robin over both workers: {served}"
    finally:
        for proc in reversed(procs):
            stop(proc)
