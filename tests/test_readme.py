"""Every example in README.md runs and prints what the README shows, and every answer it shows is right.

The README's fenced blocks are read in order. A ```text block right after a ```bash or ```python block is what
that block prints; it is compared with the real output, whitespace-insensitively (terminals wrap), `...` standing
for any text (timings). Each bash or python block is one of:

- an `r2r generate` command: run as `python -m r2r generate ...` from the repository root;
- the `r2r serve` command: started on a free port, for the `openai` client block, whose `127.0.0.1:8000` is
  pointed at it;
- a python block that uses `r2r`: executed here;
- a block listed in `NOT_RUN`, with the reason it cannot run in a test.

Anything else fails `test_every_block_is_run_or_excused`, so a new example cannot go in untested. Every `r2r`
command of every bash block, run or not, is parsed by the CLI's own parser; every `#### <answer>` shown is checked
against the question's true answer (the testbed's generator forms, solved independently of the models); the
playground's default prompt is answered correctly under the playground's default settings; the request-extras
table lists exactly the wire fields beyond OpenAI's, and the results table is `bench/headline.json`'s batch-1 rows.
"""
from __future__ import annotations

import ast
import contextlib
import html
import io
import json
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PLAYGROUND = REPO / "serving" / "http" / "static" / "playground.html"
HEADLINE = REPO / "bench" / "headline.json"
README_PORT = "127.0.0.1:8000"  # the address the README's client examples use
START_TIMEOUT_S = 600  # a loaded 2-core machine can take minutes to import torch and load the pair

# blocks that cannot run in a test, by how their first line starts, and why
NOT_RUN = {
    "make serve": "sets up .venv and serves until stopped (`make test` would run this test again); "
                  "the `r2r serve` block is run instead",
    "# 1. labels": "labels, trains and evaluates on the user's own models (hours); its commands are parsed",
    "r2r serve --backend sglang": "needs CUDA GPUs and SGLang; its r2r command is parsed",
}


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # where the block opens in README.md
    shows: str | None  # the ```text block right after it: what it prints

    @property
    def first_line(self) -> str:
        return next(line for line in self.code.splitlines() if line.strip()).strip()

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.first_line[:60]!r})"


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    fences = list(re.finditer(r"^```(\w*)\n(.*?)^```\n?", text, re.MULTILINE | re.DOTALL))
    blocks, taken = [], set()
    for i, m in enumerate(fences):
        line = text.count("\n", 0, m.start()) + 1
        if m.group(1) == "text":
            assert i - 1 in taken, f"README.md:{line}: a text block must follow the block whose output it shows"
            continue
        shows = None
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        if nxt is not None and nxt.group(1) == "text" and not text[m.end():nxt.start()].strip():
            shows = nxt.group(2)
            taken.add(i)
        blocks.append(Block(m.group(1), m.group(2), line, shows))
    return blocks


def commands(block: Block) -> list[list[str]]:
    """The shell commands of a bash block as argv lists (quoted newlines and `\\` continuations joined)."""
    out, pending = [], ""
    for line in block.code.splitlines():
        pending += line + "\n"
        if pending.rstrip().endswith("\\"):
            continue
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if argv:
            out.append(argv)
        pending = ""
    assert not pending.strip(), f"{block}: unterminated command {pending!r}"
    return out


class Kind(str, Enum):
    """The examples this test runs."""

    GENERATE = "r2r generate"
    SERVE = "r2r serve"
    CLIENT = "openai client"
    API = "python api"


def kind_of(block: Block) -> Kind | None:
    if block.lang == "bash":
        cmds = commands(block)
        if len(cmds) == 1 and cmds[0][:2] == ["r2r", "generate"]:
            return Kind.GENERATE
        if cmds == [["r2r", "serve"]]:
            return Kind.SERVE
    if block.lang == "python":
        if "from openai import OpenAI" in block.code:
            return Kind.CLIENT
        if "import r2r" in block.code:
            return Kind.API
    return None


def excuse(block: Block) -> str | None:
    return next((why for start, why in NOT_RUN.items() if block.first_line.startswith(start)), None)


def blocks_of(kind: Kind) -> list[Block]:
    return [b for b in readme_blocks() if kind_of(b) == kind]


# -- comparing what the README shows with what is printed --

def assert_shows(block: Block, printed: str) -> None:
    assert block.shows is not None, f"{block}: show what it prints in a ```text block right after it"
    pieces = [r"\s+".join(map(re.escape, piece.split())) for piece in block.shows.strip().split("...")]
    assert re.fullmatch(r".*?".join(pieces), printed.strip(), re.DOTALL), (
        f"{block} shows\n{block.shows.strip()}\nbut printed\n{printed.strip()}\n"
        "(where the embedded pair was retrained: keep prompts it answers right and show what it prints now)")


# -- the true answers of the testbed's two task families, worked out without a model --

_MATH = re.compile(r"(\w+) has (\d+) (\w+)\.((?: Then [^.]+\.)+) How many (\w+) does (\w+) have now\?")


def math_answer(prompt: str) -> int | None:
    """The answer of a word problem in `testbed/math_tasks.py`'s forms, or None when `prompt` is not one."""
    m = _MATH.fullmatch(prompt)
    if m is None:
        return None
    name, value, item = m.group(1), int(m.group(2)), m.group(3)
    assert (m.group(5), m.group(6)) == (item, name), f"the question asks about other items or person: {prompt!r}"
    for step in re.findall(r"Then [^.]+\.", m.group(4)):
        if s := re.fullmatch(rf"Then {name} finds (\d+) more {item}\.", step):
            value += int(s.group(1))
        elif s := re.fullmatch(rf"Then {name} gives away (\d+) {item}\.", step):
            value -= int(s.group(1))
        elif s := re.fullmatch(rf"Then the number of {item} grows ([234]) times\.", step):
            value *= int(s.group(1))
        elif s := re.fullmatch(rf"Then {name} splits them into ([234]) equal piles and keeps one pile\.", step):
            assert value % int(s.group(1)) == 0, f"{value} does not split into {s.group(1)} piles: {prompt!r}"
            value //= int(s.group(1))
        else:
            raise AssertionError(f"not a step the testbed was trained on: {step!r}")
        assert 0 < value < 250, f"the testbed's values stay in 1..249: {prompt!r}"
    return value


def true_answer(prompt: str) -> int | None:
    if prompt.startswith("What does this code print?\n"):
        from r2r.testbed.code_tasks import run_snippet

        return int(run_snippet(prompt))
    return math_answer(prompt)


def prompts_in(block: Block) -> list[str]:
    if block.lang == "bash":
        strings = [arg for argv in commands(block) for arg in argv]
    else:
        strings = [n.value for n in ast.walk(ast.parse(block.code)) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)]
    return [s for s in strings if true_answer(s) is not None]


# -- fast checks: no model --

def test_every_block_is_run_or_excused() -> None:
    blocks = readme_blocks()
    assert blocks, "README.md has no code blocks"
    untested = [str(b) for b in blocks if kind_of(b) is None and excuse(b) is None]
    assert not untested, f"README blocks neither run by this test nor listed in NOT_RUN with a reason: {untested}"
    stale = [start for start in NOT_RUN if not any(b.first_line.startswith(start) for b in blocks)]
    assert not stale, f"NOT_RUN lists blocks the README no longer has: {stale}"
    for b in blocks:
        if kind_of(b) in (Kind.GENERATE, Kind.CLIENT, Kind.API):
            assert b.shows is not None, f"{b}: show what it prints in a ```text block right after it"
    assert len(blocks_of(Kind.SERVE)) == 1 and blocks_of(Kind.CLIENT), "expected one `r2r serve` block and a client"


def test_every_r2r_command_parses() -> None:
    from r2r.cli import build_parser

    n = 0
    for block in readme_blocks():
        if block.lang != "bash":
            continue
        for argv in commands(block):
            if argv[0] != "r2r":
                continue
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    build_parser().parse_args(argv[1:])
                except SystemExit as exc:  # --help exits 0
                    if exc.code in (0, None):
                        continue
                    raise AssertionError(f"{block}: `{shlex.join(argv)}` is refused by the CLI: "
                                         f"{err.getvalue().strip()}") from exc
            n += 1
    assert n >= 8, f"only {n} r2r commands found in the README"


def test_shown_answers_are_right() -> None:
    checked = 0
    for block in readme_blocks():
        prompts = prompts_in(block)
        if block.shows is None:
            assert not prompts, f"{block} asks the testbed a question but shows no answer"
            continue
        assert prompts, f"{block} shows an output but asks no question in the testbed's forms"
        shown = {int(a) for a in re.findall(r"####\s*(-?\d+)", block.shows)}
        right = {true_answer(p) for p in prompts}
        assert shown == right, f"{block} shows the answers {sorted(shown)}; its questions' answers are {sorted(right)}"
        checked += 1
    assert checked >= 4


def _table(section: str) -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    body = text.split(section, 1)[1].split("\n#", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]  # past header and rule


def test_request_extras_table_lists_the_wire_extras() -> None:
    from r2r.serving.http.protocol import ChatCompletionRequest, CompletionRequest

    openai_fields = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                     "seed", "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs"}
    extras = (set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)) - openai_fields
    listed = {row[0].strip("`") for row in _table("### Request extras")}
    assert listed == extras, f"README's request extras {sorted(listed)} != the wire's {sorted(extras)}"


def test_results_table_is_the_headline_json() -> None:
    runs = json.loads(HEADLINE.read_text())
    expected = []
    for family in ("math", "code"):
        r = runs[family]["batch_1"]
        base = r["llm_alone"]["tokens_per_s"]

        def x(name: str) -> str:
            return f"{r[name]['accuracy']:.1%}, {r[name]['tokens_per_s'] / base:.2f}x"

        expected.append([family, f"{r['slm_alone']['accuracy']:.1%}",
                         f"{r['llm_alone']['accuracy']:.1%}, {base:.0f} tok/s", x("lossless_speculative"),
                         f"{x('routed_speculative')}, {r['routed_speculative']['llm_share']:.1%} LLM tokens"])
    assert _table("## Results") == expected, f"README's results table should read {expected} ({HEADLINE})"


# -- the examples, run --

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _r2r(argv: list[str]) -> list[str]:
    assert argv[0] == "r2r", argv
    return [sys.executable, "-m", "r2r", *argv[1:]]


@dataclass
class Launched:
    generate: dict[int, tuple[subprocess.Popen, Path]]  # a generate block's line -> its process and stdout file
    server: subprocess.Popen
    server_log: Path
    port: int


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    """The server and every `r2r generate` example, started at once: they load the pair side by side. Output goes
    to files (a full pipe would block a process nobody reads yet)."""
    logs = tmp_path_factory.mktemp("readme")
    port = _free_port()
    (serve,) = blocks_of(Kind.SERVE)
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        out = logs / f"{name}.out"
        with out.open("w") as stdout, (logs / f"{name}.err").open("w") as stderr:
            procs.append(subprocess.Popen(_r2r(argv), cwd=REPO, text=True, stdout=stdout, stderr=stderr))
        return procs[-1], out

    try:
        server, _ = start(commands(serve)[0] + ["--port", str(port)], "serve")
        generate = {b.line: start(commands(b)[0], f"generate-{b.line}") for b in blocks_of(Kind.GENERATE)}
        yield Launched(generate, server, logs / "serve.err", port)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def api_namespace(launched: Launched) -> dict:
    """Runs the Python API examples here, in one namespace, while the processes above load and decode."""
    namespace: dict = {}
    for block in blocks_of(Kind.API):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block.code, str(block), "exec"), namespace)
        assert_shows(block, printed.getvalue())
    return namespace


def test_python_api_example(api_namespace: dict) -> None:
    assert blocks_of(Kind.API), "the README has no Python API example"


def test_generate_examples(launched: Launched) -> None:
    blocks = blocks_of(Kind.GENERATE)
    assert blocks, "the README has no r2r generate example"
    for block in blocks:
        proc, out = launched.generate[block.line]
        assert proc.wait(timeout=START_TIMEOUT_S) == 0, f"{block} failed:\n{out.with_suffix('.err').read_text()}"
        assert_shows(block, out.read_text())


def test_openai_client_example(launched: Launched) -> None:
    import httpx

    url = f"http://127.0.0.1:{launched.port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert launched.server.poll() is None, f"r2r serve exited:\n{launched.server_log.read_text()}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        assert time.monotonic() < deadline, "r2r serve did not come up"
        time.sleep(0.5)
    for block in blocks_of(Kind.CLIENT):
        assert README_PORT in block.code, f"{block} does not talk to the README's server at {README_PORT}"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block.code.replace(README_PORT, f"127.0.0.1:{launched.port}"), str(block), "exec"), {})
        assert_shows(block, printed.getvalue())


def test_playground_prompt_is_answered_right(api_namespace: dict) -> None:
    """The playground's default request (its prompt, LLM budget, token limit, temperature, mode, the server's
    default policy) gets the right answer from the embedded pair."""
    import r2r

    page = PLAYGROUND.read_text(encoding="utf-8")

    def field(pattern: str) -> str:
        m = re.search(pattern, page, re.DOTALL)
        assert m, f"{PLAYGROUND.name}: no match for {pattern!r}"
        return m.group(1)

    prompt = html.unescape(field(r'<textarea id="prompt">(.*?)</textarea>'))
    right = true_answer(prompt)
    assert right is not None, f"the playground's prompt is not in a form the testbed pair was trained on: {prompt!r}"
    assert re.search(r'id="usebudget"[^>]*checked', page), "the playground no longer sends its budget by default"
    pair = api_namespace.get("pair")
    assert isinstance(pair, r2r.Pair), "the README's Python API example no longer leaves a `pair`"
    out = pair.generate([prompt], llm_share=float(field(r'id="budget"[^>]*value="([\d.]+)"')),
                        max_tokens=int(field(r'id="maxtokens"[^>]*value="(\d+)"')),
                        temperature=float(field(r'id="temperature"[^>]*value="([\d.]+)"')),
                        mode=field(r'<select id="mode"><option>(\w+)</option>'))[0]
    assert out.text.rstrip().endswith(f"#### {right}"), f"the playground's prompt gets\n{out.text}\nnot #### {right}"
