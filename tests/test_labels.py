"""The label pipeline: resumable after a real kill, clear errors on bad input, verifiers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from r2r.data_gen.prompts import load_prompts
from r2r.data_gen.shards import load_labels
from r2r.data_gen.verifiers import AnswerVerifier, Candidate

LABEL_ARGS = ["--prompts", "testbed-math:12", "--chunk-size", "2", "--batch-size", "4", "--max-new-tokens", "12",
              "--keep-unfinished"]


def r2r(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def label_rows(root: Path) -> list[tuple]:
    ds, _ = load_labels(root)
    cols = ds.select_columns(["data_id", "position", "slm_token", "ref_token", "mismatch", "divergent"])[:]
    return sorted(zip(*cols.values()))


@pytest.fixture(scope="module")
def tiny_pair(tiny_models) -> list[str]:
    return ["--slm", str(tiny_models["llama"]), "--llm", str(tiny_models["llama_b"])]


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path: Path, tiny_pair) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    proc = r2r("label", *tiny_pair, *LABEL_ARGS, "--out", str(clean))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    proc = r2r("label", *tiny_pair, *LABEL_ARGS, "--out", str(killed))
    deadline = time.monotonic() + 300
    while not list((killed / "mismatch").glob("shard-00001")):  # kill mid-run, after some shards landed
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "labels" / "shard-00005").exists(), "killed before the end"
    proc = r2r("label", *tiny_pair, *LABEL_ARGS, "--out", str(killed))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "tokens/s" in out
    clean_rows, resumed_rows = label_rows(clean), label_rows(killed)
    assert len(clean_rows) > 0
    assert resumed_rows == clean_rows, "resumed labels must equal an uninterrupted run"
    keys = [(r[0], r[1]) for r in resumed_rows]
    assert len(keys) == len(set(keys)), "no duplicated rows"
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["counts"]["tokens"] == len(clean_rows)


def test_resuming_with_other_settings_is_an_error(tmp_path: Path, tiny_pair) -> None:
    out = tmp_path / "x"
    proc = r2r("label", *tiny_pair, *LABEL_ARGS[:2], "--max-new-tokens", "4", "--keep-unfinished", "--out", str(out))
    assert proc.wait(timeout=600) == 0
    proc = r2r("label", *tiny_pair, *LABEL_ARGS[:2], "--max-new-tokens", "5", "--keep-unfinished", "--out", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "other models or settings" in err


def test_bad_prompt_lines_are_skipped_with_a_count(tmp_path: Path, caplog) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\nnot json\n{"messages": [{"role": "user", "content": "hi"}]}\n'
                    '{"prompt": ""}\n{"other": 1}\n')
    records = load_prompts(str(path))
    assert [r.chat()[0]["content"] for r in records] == ["fine", "hi"]
    assert "skipped 3 bad line(s): 2, 4, 5" in caplog.text
    empty = tmp_path / "e.jsonl"
    empty.write_text("garbage\n")
    with pytest.raises(ValueError, match="no usable prompts"):
        load_prompts(str(empty))
    with pytest.raises(FileNotFoundError):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_corrupt_shard_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "labels" / "shard-00000").mkdir(parents=True)
    (tmp_path / "manifest.json").write_text('{"identity": {}, "counts": {}}')
    with pytest.raises(ValueError, match="shard-00000"):
        load_labels(tmp_path)


def test_answer_verifier() -> None:
    ctx = "Ava starts with 12 apples.\\nAva finds 5 more: 12 + 5 = "
    same = Candidate(ctx, "17.\n#### 17", "17.\n#### 17")
    reworded = Candidate("Ava starts", " having 12.\n#### 17", " with 12.\n#### 17")
    wrong = Candidate(ctx, "18.\n#### 18", "17.\n#### 17")
    assert AnswerVerifier().label([same, reworded, wrong]) == [0, 0, 1]


def test_labels_hold_the_teacher_forced_slm(tmp_path: Path, tiny_pair, tiny_models) -> None:
    """Each row's slm_token is the SLM's argmax on prompt + reference prefix, recomputed independently."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tf"
    proc = r2r("label", *tiny_pair, "--prompts", "testbed-code:2", "--max-new-tokens", "6", "--keep-unfinished",
               "--out", str(out))
    assert proc.wait(timeout=600) == 0
    ds, _ = load_labels(out)
    ref = ds.select_columns(["data_id", "position", "slm_token", "ref_token", "mismatch"])[:]
    refs = __import__("datasets").load_from_disk(str(out / "reference" / "shard-00000"))[:]
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    for data_id, prompt, ref_ids in zip(refs["data_id"], refs["prompt_ids"], refs["ref_ids"]):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + ref_ids])).logits[0]
        want = logits[len(prompt) - 1 : len(prompt) + len(ref_ids) - 1].argmax(-1).tolist()
        got = [t for d, t in zip(ref["data_id"], ref["slm_token"]) if d == data_id]
        assert got == want
    assert np.array_equal(np.array(ref["mismatch"]), np.array(ref["slm_token"]) != np.array(ref["ref_token"]))


def test_embedding_verifier() -> None:
    from r2r.data_gen.verifiers import EmbeddingVerifier, minilm_dir

    try:
        verifier = EmbeddingVerifier(minilm_dir(), threshold=0.9)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    ctx = "We need the total. "
    same = Candidate(ctx, "So the total is 12 apples.", "So the total is 12 apples.")
    other = Candidate(ctx, "The weather in Paris is rainy today.", "So the total is 12 apples.")
    assert verifier.label([same, other]) == [0, 1]


def test_judge_verifier_parses_answers() -> None:
    """The judge's prompt goes through the chat template; its first 0/1 is the label, none counts as divergent."""
    from r2r.data_gen.verifiers import JudgeVerifier

    from .fakes import FakeBackend

    class DigitTokenizer:  # token i decodes to str(i); the fake judge's greedy answers are fixed per prompt
        eos_token_id = 9

        def apply_chat_template(self, messages, **_):
            return {"input_ids": [len(messages[-1]["content"]) % 7 + 1]}

        def decode(self, ids, **_):
            return "".join(str(i) for i in ids)

    backend = FakeBackend(10, seed=0)
    judge = JudgeVerifier(backend, DigitTokenizer(), max_tokens=3)
    cands = [Candidate("ctx ", "a" * n, "b") for n in range(7)]

    def expected(c: Candidate) -> int:  # independent greedy decode of the fake judge
        ids = judge.prompt(c)
        out: list[int] = []
        while len(out) < 3 and (not out or out[-1] != 9):
            out.append(int(backend.logits_for(ids + out).argmax()))
        text = "".join(str(i) for i in out if i != 9)
        first = next((ch for ch in text if ch in "01"), None)
        return int(first) if first is not None else 1

    want = [expected(c) for c in cands]
    assert judge.label(cands) == want


def test_cross_tokenizer_labels_compare_bytes(tmp_path: Path, tiny_models) -> None:
    """An LLM with another tokenizer: the reference is its text, the SLM is teacher-forced over its
    own encoding of it, and a mismatch is a token whose bytes the reference text does not continue with."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from r2r.serving.byte_level.token_bytes import TokenBytes

    tok_x = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "models" / "testbed" / "tokenizer-x")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok_x), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         eos_token_id=tok_x.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llm-x")
    tok_x.save_pretrained(tmp_path / "llm-x")
    out = tmp_path / "x"
    proc = r2r("label", "--slm", str(tiny_models["llama"]), "--llm", str(tmp_path / "llm-x"), "--prompts",
               "testbed-math:2", "--max-new-tokens", "8", "--keep-unfinished", "--out", str(out))
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    ds, manifest = load_labels(out)
    assert "llm_tokenizer" in manifest["identity"]
    refs = __import__("datasets").load_from_disk(str(out / "reference" / "shard-00000"))[:]
    slm_tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    rows = ds.select_columns(["data_id", "position", "slm_token", "mismatch", "divergent"])[:]
    vocab = TokenBytes.from_tokenizer(slm_tok)  # token bytes (checked against the tokenizer in test_byte_level)
    for data_id, text, ref_ids in zip(refs["data_id"], refs["ref_text"], refs["ref_ids"]):
        assert vocab.decode(ref_ids) == text.encode(), "the SLM is teacher-forced over the reference text itself"
        mine = [(p, t, m) for d, p, t, m in zip(rows["data_id"], rows["position"], rows["slm_token"],
                                                rows["mismatch"]) if d == data_id]
        assert [p for p, _, _ in mine] == list(range(len(ref_ids)))
        for pos, token, mismatch in mine:
            rest = text.encode()[len(vocab.decode(ref_ids[:pos])):]
            piece = vocab.table[token]
            assert mismatch == (not piece or not rest.startswith(piece)), (pos, piece, rest[:10])
    assert all(m or not d for m, d in zip(rows["mismatch"], rows["divergent"]))


def test_router_card_names_the_labeling_llm(tmp_path: Path, tiny_pair, tiny_models) -> None:
    """Which SLM slips are divergent depends on the LLM that labeled them: the router's card says which."""
    labels, router = tmp_path / "labels", tmp_path / "router"
    proc = r2r("label", *tiny_pair, "--prompts", "testbed-math:30", "--batch-size", "16", "--max-new-tokens", "6",
               "--keep-unfinished", "--out", str(labels))  # 30 prompts: some fall in the validation split
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = r2r("train-router", *tiny_pair, "--labels", str(labels), "--positives", "mismatch", "--epochs", "2",
               "--out", str(router))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    meta = json.loads((router / "router.json").read_text())
    assert meta["labels"][0]["llm_dir"] == str(tiny_models["llama_b"])
    card = (router / "README.md").read_text()
    assert f"labels labels (LLM {tiny_models['llama_b']})" in card
    assert "every SLM token that differs" in card  # --positives mismatch
    assert card.splitlines()[0] == f"# r2r router for {meta['slm_dir']}", "the card is the pair's, not the testbed's"
    assert f"Labeling LLM: {tiny_models['llama_b']}" in card
    lab = meta["labels"][0]
    assert (f"{lab['neutral']:,} neutral, {lab['unverifiable']:,} unverifiable" in card
            and lab["neutral"] + lab["divergent"] + lab["unverifiable"] == lab["mismatches"]), "the card's verdict counts"

    from r2r.router.card import write_router_card

    meta["labels"][0] |= {"positives": "divergent", "continue_with": "routed", "continue_share": 0.15,
                          "continue_router": "0123abcd", "verifier": "judge", "task": "gsm8k"}
    (router / "router.json").write_text(json.dumps(meta))
    write_router_card(router, None)
    card = (router / "README.md").read_text()
    assert "routed decoding with the previous router (fingerprint 0123abcd) at an LLM share of 15%, as in serving" in card
    assert "`r2r label --verifier judge --task gsm8k`" in card and "as an instruct model judged it" in card


def test_routed_continuation_is_routed_decoding(tmp_path: Path, tiny_models) -> None:
    """--continue-with routed: each SLM branch is continued by routed decoding. Always-LLM routing must give
    the published (LLM) continuation; always-SLM routing the SLM's own greedy continuation, recomputed
    here with a plain argmax loop over the HF model."""
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM

    from r2r.data_gen.pipeline import LabelConfig, LabelPipeline, RoutedContinuation
    from r2r.router.policies import AlwaysLLM, AlwaysSLM
    from r2r.serving.pair import PairSpec, load_pair

    pair = load_pair(PairSpec("tiny", tiny_models["llama"], tiny_models["llama_b"]), "cpu")
    prompts = load_prompts("testbed-math:3")
    base = LabelConfig(out_dir=tmp_path / "llm", max_new_tokens=8, keep_unfinished=True)
    routed = replace(base, out_dir=tmp_path / "routed", continue_with="routed")
    published = LabelPipeline(pair, AnswerVerifier(), base, prompts)
    ref = published.reference(prompts)
    mism = published.mismatch(ref)
    by_llm = published.continuation(ref, mism)
    assert len(by_llm["data_id"]) > 0, "the tiny pair must disagree somewhere"

    always_llm = LabelPipeline(pair, AnswerVerifier(), routed, prompts, RoutedContinuation(AlwaysLLM(), "always-llm"))
    assert always_llm.continuation(ref, mism) == by_llm

    by_slm = LabelPipeline(pair, AnswerVerifier(), replace(routed, out_dir=tmp_path / "routed-slm"), prompts,
                           RoutedContinuation(AlwaysSLM(), "always-slm")).continuation(ref, mism)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    rule = pair.stop_rule()
    refs = dict(zip(ref["data_id"], zip(ref["prompt_ids"], ref["ref_ids"])))
    toks = {(d, p): t for d, p, t in zip(mism["data_id"], mism["position"], mism["slm_token"])}
    for d, pos, branch in zip(by_slm["data_id"], by_slm["position"], by_slm["slm_branch"]):
        prompt, ref_ids = refs[d]
        ids, new = prompt + ref_ids[:pos] + [toks[(d, pos)]], []
        while len(new) < base.max_new_tokens and not (new and new[-1] in rule.eos_ids):
            with torch.inference_mode():
                new.append(int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax()))
        assert branch == rule.decode([toks[(d, pos)]]) + rule.text_of(new)
    assert by_slm["slm_branch"] != by_llm["slm_branch"]


def test_routed_labels_resume_only_with_the_same_router(tmp_path: Path, tiny_models) -> None:
    """Another continuation router labels other slips divergent: resuming a routed label set with it is an
    error, and the fingerprint follows the router's weights."""
    from r2r.data_gen.pipeline import LabelConfig, LabelPipeline, RoutedContinuation
    from r2r.router.policies import AlwaysSLM
    from r2r.serving.backends.fingerprint import router_fingerprint
    from r2r.serving.pair import PairSpec, load_pair

    pair = load_pair(PairSpec("tiny", tiny_models["llama"], tiny_models["llama_b"]), "cpu")
    prompts = load_prompts("testbed-math:2")
    cfg = LabelConfig(out_dir=tmp_path / "routed", continue_with="routed")
    LabelPipeline(pair, AnswerVerifier(), cfg, prompts, RoutedContinuation(AlwaysSLM(), "router-a"))
    LabelPipeline(pair, AnswerVerifier(), cfg, prompts, RoutedContinuation(AlwaysSLM(), "router-a"))  # resumes
    with pytest.raises(ValueError, match="other models or settings"):
        LabelPipeline(pair, AnswerVerifier(), cfg, prompts, RoutedContinuation(AlwaysSLM(), "router-b"))

    router = tmp_path / "router"
    router.mkdir()
    (router / "router.json").write_text("{}")
    (router / "router.safetensors").write_bytes(b"a")
    before = router_fingerprint(router)
    (router / "router.safetensors").write_bytes(b"b")
    assert router_fingerprint(router) != before


def test_routed_continuation_needs_a_router(tmp_path: Path, tiny_pair) -> None:
    proc = r2r("label", *tiny_pair, "--prompts", "testbed-math:2", "--continue-with", "routed",
               "--out", str(tmp_path / "x"))
    assert proc.wait(timeout=600) == 2
    assert "router" in proc.stderr.read()


def test_label_with_a_task_reads_its_rows_and_counts_every_verdict(tmp_path: Path, tiny_pair, tiny_models) -> None:
    """`--task gsm8k` on a JSONL file in GSM8K's own fields: prompts are the task's problems, the answer verifier
    compares branches by the task's comparer (never the `####` rule unless the task says so), and the manifest's
    neutral / divergent / unverifiable counts add up, per shard and in all."""
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"} for a, b in ((3, 4), (10, 5), (7, 8), (2, 9))]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "labels"
    proc = r2r("label", *tiny_pair, "--prompts", str(data), "--task", "gsm8k", "--chunk-size", "2", "--batch-size",
               "4", "--max-new-tokens", "10", "--keep-unfinished", "--out", str(out))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    _, manifest = load_labels(out)
    counts, ident = manifest["counts"], manifest["identity"]
    assert ident["settings"]["task"] == "gsm8k"
    assert counts["neutral"] + counts["divergent"] + counts["unverifiable"] == counts["mismatches"] > 0
    assert len(counts["shards"]) == 2
    for key in ("neutral", "divergent", "unverifiable"):
        assert sum(s[key] for s in counts["shards"]) == counts[key]
    # random tiny models rarely state answers: many candidates are unverifiable; over half, and the run says so
    assert counts["unverifiable"] > 0
    assert ("WARNING" in proc.stderr.read()) == (counts["unverifiable"] * 2 > counts["mismatches"])

    from r2r.data_gen.pipeline import LabelConfig, make_pipeline
    from r2r.evals.tasks import get_task
    from r2r.commands.label import _prompts
    from r2r.serving.pair import PairSpec, load_pair

    seen: list[str] = []

    def recording(data_id: str, ref: str, slm: str):
        seen.append(data_id)
        from r2r.data_gen.verifiers import Verdict

        return Verdict.NEUTRAL

    prompts, problems = _prompts(str(data), get_task("gsm8k"))
    pair = load_pair(PairSpec("tiny", tiny_models["llama"], tiny_models["llama_b"]), "cpu")
    cfg = LabelConfig(out_dir=tmp_path / "rec", batch_size=4, max_new_tokens=10, keep_unfinished=True, task="gsm8k")
    make_pipeline(pair, AnswerVerifier(recording, task="gsm8k"), cfg, prompts).run()
    assert seen and set(seen) <= {p.id for p in problems}, "the comparer gets each candidate's problem id"
