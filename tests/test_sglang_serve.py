"""The CLI on SGLang engines, as a user runs it: `r2r serve --backend sglang --pair testbed` answering the
`openai` client (streaming and not), and `r2r label --backend sglang` labelling a small set as the HF backend
does. Each starts engines of its own, so these run before the shared ones (tests/conftest.py)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sglang, pytest.mark.sglang_own_engines]

START_S = 900  # two engine starts on a busy 2-core CPU (20-90 s each) and the router's native build
QUESTION = "Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?"


def r2r_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGINT (the server shuts its engines down), then the whole process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_healthy(url: str, procs: list[subprocess.Popen], logs: list[Path], start_s: float) -> None:
    """Until `url` answers /health; a process that exits first, or start_s seconds, fail with its log's tail."""
    import httpx

    deadline = time.monotonic() + start_s
    while True:
        for proc, log in zip(procs, logs):
            assert proc.poll() is None, f"{proc.args[-8:]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url}/health not up within {start_s} s:\n{logs[0].read_text()[-3000:]}"
        time.sleep(2)


@pytest.fixture  # one test: its engines stop before the label test starts two more
def sglang_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(r2r_command("serve", "--backend", "sglang", "--pair", "testbed", "--port", str(port),
                                            "--max-running", "8"),
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, [proc], [log], START_S)
        yield url
    finally:
        stop(proc)
    assert proc.returncode == 0, f"r2r serve did not stop cleanly ({proc.returncode}):\n{log.read_text()[-3000:]}"


def test_serve_answers_the_openai_client(sglang_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{sglang_server}/v1", api_key="none")
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="r2r-testbed", messages=messages, max_tokens=120, temperature=0)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens > 0
    assert "17" in text, f"the testbed LLM-quality answer to 12 + 5: {text!r}"
    chunks = client.chat.completions.create(model="r2r-testbed", messages=messages, max_tokens=120, temperature=0,
                                            stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, "streaming gives the same greedy answer"
    done = client.completions.create(model="r2r-testbed", prompt="Q: 2 + 3 =", max_tokens=8, temperature=0)
    assert done.choices[0].text is not None


def label_summary(backend: str, out: Path) -> str:
    """`r2r label` on 4 math prompts; its summary line without the timing."""
    run = subprocess.run(r2r_command("label", "--backend", backend, "--pair", "testbed", "--prompts", "testbed-math:4",
                                     "--out", str(out), "--batch-size", "4", "--max-new-tokens", "120"),
                         capture_output=True, text=True, timeout=START_S + 600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if "tokens labeled" in x)
    return re.sub(r"; this run: .*", "", line)


def test_label_runs_on_sglang_as_on_hf(tmp_path: Path) -> None:
    """Same tokens labelled, same mismatches, same neutral/divergent split as the HF backend's labels."""
    sgl = label_summary("sglang", tmp_path / "sglang")
    assert re.search(r"[1-9]\d* tokens labeled", sgl), sgl
    assert label_summary("hf", tmp_path / "hf") == sgl
