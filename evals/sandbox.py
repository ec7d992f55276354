"""Run untrusted code in a separate, limited process — never in the evaluating process.

Limits: wall-clock timeout, CPU seconds, address space, file size, a fresh temporary working
directory, no network (a new network namespace where the kernel allows it, otherwise the
socket module is disabled in the child), and privileges dropped to `nobody` when running as
root so the process-count limit applies (it defeats fork bombs). The whole process group is
killed afterwards, so nothing the code spawned outlives the call.
"""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
NOBODY = 65534
_NO_NETWORK_PRELUDE = (
    "import socket as _s\n"
    "def _blocked(*a, **k):\n    raise OSError('network disabled in the r2r sandbox')\n"
    "_s.socket = _blocked; _s.create_connection = _blocked\n"
)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_mb: int = 16


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exit code 0 within the limits
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


def _interpreter() -> tuple[str, bool]:
    """(python to run, whether to drop to `nobody`). As root, a system python that `nobody` can execute
    (virtualenvs often live under /root); elsewhere, this interpreter with the current user's rights."""
    if os.geteuid() == 0:
        system = shutil.which("python3", path="/usr/bin:/bin")
        if system:
            return system, True
    return sys.executable, False


def _limit(limits: SandboxLimits, workdir: str, drop: bool) -> None:  # runs in the child between fork and exec
    os.setsid()
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_mb * mb, limits.max_file_mb * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)  # no interfaces but a down loopback
    except (OSError, AttributeError):
        pass
    if drop:
        os.chown(workdir, NOBODY, NOBODY)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))


def run_python(source: str, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` with `python -I` in a limited child process; passed means exit code 0."""
    limits = limits or SandboxLimits()
    with tempfile.TemporaryDirectory(prefix="r2r-sandbox-") as workdir:
        os.chmod(workdir, 0o777)
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_NO_NETWORK_PRELUDE + source)
        os.chmod(path, 0o644)
        python, drop = _interpreter()
        proc = subprocess.Popen(
            [python, "-I", "-S", path], cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"},
            preexec_fn=lambda: _limit(limits, workdir, drop),  # noqa: PLW1509 - the limits must apply before exec
        )
        timed_out = False
        try:
            out, err = proc.communicate(stdin, timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            out, err = proc.communicate()
        finally:
            _kill_group(proc.pid)
    return SandboxResult(passed=proc.returncode == 0 and not timed_out, returncode=proc.returncode,
                         stdout=out[-10000:], stderr=err[-10000:], timed_out=timed_out)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
