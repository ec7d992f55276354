"""The GPU check's parts, each a subprocess with its own time limit on a device (none in the CPU mode, which
`make test` runs: a busy machine is slow, not broken): a part that fails is reported and the rest still run.
Writes gpu_check.json (device, versions, each part's result and timing) and a summary to stdout.
Run through scripts/gpu_check.sh, which sets up PYTHONPATH with the carried wheels."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def part(name: str, cmd: list[str], timeout: float | None, env: dict[str, str], results: dict) -> None:
    """Run one part; `timeout` None: no limit."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
    seconds = time.perf_counter() - start
    results[name] = {"ok": rc == 0, "rc": rc, "seconds": round(seconds, 1), "command": " ".join(cmd),
                     "tail": out[-3000:]}
    print(f"[{'ok' if rc == 0 else 'FAILED'}] {name} ({seconds:.0f} s)", flush=True)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for module in ("torch", "transformers", "tokenizers", "safetensors", "numpy", "sklearn", "sglang"):
        try:
            out[module] = __import__(module).__version__
        except Exception as exc:  # any import failure means: not usable here; say which
            out[module] = f"unavailable ({type(exc).__name__})"
    import torch

    out["cuda"] = torch.version.cuda
    out["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        out["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        out["nvidia_smi"] = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few problems (the CPU self-check)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu")))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, R2R_TEST_DEVICE=args.device, HF_HUB_OFFLINE="1",
               R2R_TEST_PROMPTS="4" if args.quick else "24")
    py = sys.executable
    cpu = args.device == "cpu"

    def limit(seconds: float) -> float | None:
        """A device's budget for a part (device time is lent by the minute); the CPU mode has none."""
        return None if cpu else seconds

    start = time.perf_counter()
    report: dict = {"device": args.device, "quick": args.quick, "versions": versions(), "parts": {}}
    parts = report["parts"]
    print(json.dumps(report["versions"], indent=2), flush=True)
    part("gpu_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu.py"],
         limit(90 if args.quick else 100), env, parts)
    # quick: few and short answers (the testbed LLM's CPU step is ~17 ms)
    n, batches, tokens = ("2", "1,2", ["--max-tokens", "40"]) if args.quick else ("16", "1,8,32", [])
    part("headline", [py, "-m", "r2r", "bench", "headline", "--device", args.device, "--n", n, "--batch-sizes",
                      batches, *tokens, "--no-plot", "--out", str(args.out / "headline.json")],
         limit(150 if args.quick else 130), env, parts)
    part("costs", [py, "-m", "r2r", "bench", "gpu-costs", "--device", args.device, "--out",
                   str(args.out / "costs.json"), *(["--quick", "--batch-sizes", "1,2"] if args.quick else [])],
         limit(60 if args.quick else 120), env, parts)
    if isinstance(report["versions"]["sglang"], str) and report["versions"]["sglang"].startswith("unavailable"):
        parts["sglang"] = {"ok": None, "skipped": "import sglang failed: the SGLang tests and its per-step cost "
                                                  "(beside the HF backend's) were not run"}
        print("[skipped] sglang: not importable here", flush=True)
    else:
        part("sglang_costs", [py, "-m", "r2r", "bench", "gpu-costs", "--device", args.device, "--batch-sizes", "1,8",
                              "--sglang-dir", "/tmp/r2r-sglang-slm", "--out", str(args.out / "sglang_costs.json")],
             limit(150), env, parts)
        # the tests `make test-sglang` runs on a CPU, here on the GPU with SGLang's own kernels (no stand-in)
        part("sglang", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "sglang"], limit(420), env, parts)
    for name in ("headline", "costs", "sglang_costs"):
        path = args.out / f"{name}.json"
        if path.exists():
            report[name] = json.loads(path.read_text())
    report["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    failed = [k for k, v in parts.items() if v.get("ok") is False]
    ran = [k for k, v in parts.items() if v.get("ok") is not None]
    print(f"gpu check: {len(ran) - len(failed)} of {len(ran)} parts ok ({len(parts) - len(ran)} skipped) in "
          f"{report['seconds']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f" -> {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
