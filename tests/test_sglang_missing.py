"""`--backend sglang` where sglang is not installed (the default venv): one line naming how to get it, exit 2."""
from __future__ import annotations

import importlib.util

import pytest

from .test_cli import r2r


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="sglang is installed in this Python")
@pytest.mark.parametrize("args", [["generate", "--backend", "sglang", "hi"],
                                  ["serve", "--backend", "sglang", "--port", "8979"],
                                  ["label", "--backend", "sglang", "--prompts", "testbed-math:2", "--out", "/tmp/x"]])
def test_backend_sglang_without_sglang_is_one_line_exit_2(testbed_dirs, args: list[str]) -> None:
    out = r2r(*args)
    assert out.returncode == 2, out.stderr
    assert "make test-sglang" in out.stderr and "pip install" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
