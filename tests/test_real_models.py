"""Real models (slow): SmolLM2-135M through the backend contract and HumanEval end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.backends.hf import HFBackend

from .test_hf_backend import check_backend


@pytest.mark.slow
def test_backend_on_smollm2(smollm2_dir) -> None:
    check_backend(HFBackend(smollm2_dir))


@pytest.mark.slow
def test_humaneval_with_smollm2_alone(smollm2_dir, tmp_path) -> None:
    """Loader, chat prompt and sandbox on a real model: SmolLM2 as both models, SLM-only policy."""
    out = tmp_path / "he"
    proc = subprocess.run([sys.executable, "-c", "from serving.cli import main_entry; main_entry()", "eval",
                           "humaneval", "--slm", str(smollm2_dir), "--llm", str(smollm2_dir), "--policies", "slm",
                           "--limit", "16", "--max-tokens", "256", "--out", str(out)],
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    run = report["runs"]["slm@0.0"]
    assert run["n"] == 16 and run["complete"]
    assert all(p["tokens"] > 0 for p in run["problems"])
