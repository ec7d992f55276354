"""The GPU check's CPU mode (`scripts/gpu_check.sh --device cpu --quick`): the same parts on tiny shapes, so
the script a lent device runs cannot rot. Checks the JSON it writes. No wall-clock budget anywhere: the CPU
mode's parts run unbounded, so a machine busy with other work makes this slow, never failed."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_cpu_check_writes_every_part(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path), PY=os.environ.get("PY", str(REPO / ".venv" / "bin" / "python")))
    if not Path(env["PY"]).exists():
        env["PY"] = "python3"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True)  # no time limit: its parts have none on a CPU either
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert {"gpu_tests", "headline", "costs", "sglang"} <= set(parts)
    failed = {k: v["tail"] for k, v in parts.items() if v.get("ok") is False}
    assert not failed and proc.returncode == 0, f"failed parts: {failed}\n{proc.stdout[-2000:]}"
    assert "passed" in parts["gpu_tests"]["tail"] and "skipped" not in parts["gpu_tests"]["tail"].split("\n")[-2]
    assert report["versions"]["torch"] and report["device"] == "cpu"
    assert all(v.get("rc") != 124 for v in parts.values()), "a part timed out"
    assert set(report["headline"]) >= {"math", "code", "meta"}
    costs = report["costs"]
    assert {"batch_1", "batch_2"} <= set(costs) and costs["slm_parameters"] < costs["llm_parameters"]
    for share in costs["batch_1"]["shares"].values():
        assert share["measured_sequential_tokens_per_s"] > 0 and share["bound_sequential_over_llm_alone"] > 0
