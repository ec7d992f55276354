"""The code sandbox contains what it runs and reports it as a failure."""
from __future__ import annotations

import os
import time

from evals.sandbox import SandboxLimits, run_python


def test_ok_program_passes() -> None:
    result = run_python("print(sum(range(10)))")
    assert result.passed and result.stdout.strip() == "45"


def test_infinite_loop_is_killed() -> None:
    start = time.monotonic()
    result = run_python("while True: pass", limits=SandboxLimits(timeout_s=2, cpu_s=5))
    assert not result.passed and time.monotonic() - start < 10


def test_memory_hog_fails() -> None:
    result = run_python("x = bytearray(4 * 1024**3)", limits=SandboxLimits(memory_mb=256))
    assert not result.passed and "MemoryError" in result.stderr


def live_processes_of(uid: int) -> int:
    """Processes (not zombies) owned by uid, from /proc."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            count += 1
    return count


def test_fork_bomb_is_contained() -> None:
    result = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                        limits=SandboxLimits(timeout_s=3, max_processes=32))
    assert not result.passed
    if os.geteuid() == 0:  # the sandbox ran as nobody: nothing of it may be left running
        time.sleep(0.5)
        assert live_processes_of(65534) == 0, "no forked processes survive the sandbox"


def test_no_network_and_no_harm_to_the_evaluator(tmp_path) -> None:
    result = run_python("import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)")
    assert not result.passed
    marker = tmp_path / "marker"
    result = run_python(f"open({str(marker)!r}, 'w').write('x')")
    assert not marker.exists() or os.geteuid() != 0, "the sandbox (as nobody) cannot write outside its directory"
    assert run_python("import sys; sys.exit(3)").returncode == 3
