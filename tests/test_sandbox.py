"""The code sandbox contains what it runs and reports it as a failure."""
from __future__ import annotations

import os
import time

import pytest

from r2r.evals.sandbox import SandboxLimits, run_python


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


def test_no_network_even_to_a_listener_that_accepts(tmp_path) -> None:
    """A listener this test starts accepts a plain connection; the same connection from the sandbox fails."""
    import socket
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()\nprint('connected')"
        plain = subprocess.run([sys.executable, "-c", connect], capture_output=True, text=True, timeout=30)
        assert plain.returncode == 0 and "connected" in plain.stdout, f"the listener must accept: {plain.stderr}"
        result = run_python(connect)
    assert not result.passed and "connected" not in result.stdout, "the sandbox reached a listening port"
    assert "Error" in result.stderr, f"the connection must fail with an error, got: {result.stderr!r}"


def test_exit_codes_pass_through() -> None:
    assert run_python("import sys; sys.exit(3)").returncode == 3


def test_no_writes_outside_its_directory(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox drops to nobody only when started as root; as another user it writes as that user")
    marker = tmp_path / "marker"
    result = run_python(f"open({str(marker)!r}, 'w').write('x')")
    assert not result.passed and not marker.exists(), "the sandbox (as nobody) cannot write outside its directory"
