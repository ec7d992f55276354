"""bench cross-tokenizer: each pair routes with its own router at the target share."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from r2r.evals.bench.cross_tokenizer import CrossBenchConfig, cross_bench
from r2r.serving.pair import PairSpec, load_pair

from .conftest import TESTBED


def test_cross_pair_uses_its_own_router(testbed_dirs, tmp_path: Path) -> None:
    router_x = tmp_path / "router-x"  # the shared router with another share curve: a different calibration
    shutil.copytree(testbed_dirs["router"], router_x)
    meta = json.loads((router_x / "router.json").read_text())
    meta["share_curve"] = [[s, min(1.0, t + 0.1)] for s, t in meta["share_curve"]]
    (router_x / "router.json").write_text(json.dumps(meta))
    shared = load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"]), "cpu")
    cross = load_pair(PairSpec("testbed-x", testbed_dirs["slm"], TESTBED / "llm-x", router_x), "cpu")
    cfg = CrossBenchConfig(shares=(0.2,), families=("math",), n_problems=1, batch_size=1, cost_problems=1)

    result = cross_bench(shared, cross, cfg)

    thresholds = result["math"]["0.20"]["thresholds"]
    assert thresholds["shared"] == shared.learned_policy().threshold_for_share(0.2)
    assert thresholds["cross"] == cross.learned_policy().threshold_for_share(0.2)
    assert thresholds["cross"] != thresholds["shared"]
    assert result["routers"] == {"shared": str(testbed_dirs["router"]), "cross": str(router_x)}
