"""Eval sweeps: resuming a killed run gives the same report; reports and plots are written."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r2r.evals.report import wilson


def r2r(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def outcomes(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    return {key: sorted((p["id"], p["correct"], p["tokens"], p["llm_tokens"]) for p in run["problems"])
            for key, run in report["runs"].items()}


def test_killed_sweep_resumes_to_the_same_report(tmp_path: Path, tiny_models) -> None:
    args = ["eval", "testbed-code", "--slm", str(tiny_models["llama"]), "--llm", str(tiny_models["llama_b"]),
            "--policies", "slm", "random", "--limit", "6", "--batch-size", "2", "--max-tokens", "24"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    proc = r2r(*args, "--out", str(clean))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    proc = r2r(*args, "--out", str(killed))
    deadline = time.monotonic() + 300
    while not (killed / "runs" / "random@0.05.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "killed before the end"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = r2r(*args, "--out", str(killed))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert outcomes(killed) == outcomes(clean)
    report = json.loads((killed / "report.json").read_text())
    assert all(run["complete"] for run in report["runs"].values())
    for name in ("llm_share", "avg_params", "wall_seconds"):
        assert (killed / f"accuracy_vs_{name}.png").stat().st_size > 1000
    swapped = ["eval", "testbed-code", "--slm", str(tiny_models["llama_b"]), "--llm", str(tiny_models["llama"]),
               *args[6:]]
    before = sorted(p.read_text() for p in (clean / "runs").glob("*.jsonl"))
    proc = r2r(*swapped, "--out", str(clean))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "other models or settings (llm, slm differ)" in err, err
    assert sorted(p.read_text() for p in (clean / "runs").glob("*.jsonl")) == before  # nothing appended


def test_wilson_interval() -> None:
    lo, hi = wilson(50, 100)
    assert abs(lo - 0.404) < 0.001 and abs(hi - 0.596) < 0.001
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def test_resume_with_a_changed_router_threshold_is_an_error(tmp_path) -> None:
    """A run's identity includes the router's thresholds: resuming after the default threshold changed fails."""
    import json
    from types import SimpleNamespace

    import torch

    from r2r.evals.sweep import SweepConfig, _check_resumable, run_identity
    from r2r.router.checkpoint import save_router, set_default_threshold, share_curve
    from r2r.router.model import RouterConfig, RouterNet

    router = tmp_path / "router"
    net = RouterNet(RouterConfig(hidden_size=4, embed_size=4, top_k=2, width=4, depth=1), torch.zeros(8, 4))
    save_router(router, net, {"threshold": 0.5, "share_curve": share_curve(torch.rand(100).numpy()),
                              "thresholds": {"recall": {"target": 0.95, "threshold": 0.5}}})
    pair = SimpleNamespace(spec=SimpleNamespace(router=router), slm=SimpleNamespace(fingerprint="s"),
                           llm=SimpleNamespace(fingerprint="l"))
    task, cfg = SimpleNamespace(name="t"), SweepConfig(task="t", out_dir=tmp_path / "run")
    (cfg.out_dir / "runs").mkdir(parents=True)
    (cfg.out_dir / "meta.json").write_text(json.dumps({"identity": run_identity(pair, task, cfg)}))
    _check_resumable(cfg.out_dir, run_identity(pair, task, cfg))  # unchanged: resumes
    set_default_threshold(router, 0.2, "a rule")
    with pytest.raises(ValueError, match="router"):
        _check_resumable(cfg.out_dir, run_identity(pair, task, cfg))
