"""Process sandbox for untrusted programs: a pre-forked "zygote" per worker, one fresh child per job.

Design (why it cannot be fooled by the code it runs)
---------------------------------------------------
Three processes, three trust levels:

1. The *parent* (the grader, in the caller's process) holds the expected answers. It never runs
   model code and never sends expected values anywhere. It reads results as data and compares.
2. A *zygote* per worker (zygote.py): a trusted `python -c` process started with a scrubbed
   environment. It pre-imports the modules `setup_code` needs, then (when running as root,
   sandbox_isolation.py) enters its own network namespace (no interfaces but a down loopback: no
   network) and mount namespace in which private, root-owned tmpfs are mounted over every
   top-level directory except the system ones (`SYSTEM_DIRS`: an allowlist, so a checkout at an
   unusual path such as `/check/...` is hidden too), with only the Python installation bound back
   read-only; files at / read as empty. It creates a memory cgroup for its jobs (the whole process
   tree limited to `memory_mb`) where the machine lets it, and continues as PID 1 of a new PID
   namespace with a fresh `/proc` (`hidepid=invisible`). It receives jobs (setup, program,
   expressions to evaluate; never expected values) over a pipe, compiles the trusted setup code
   once, and forks one child per job.
3. A *child* per job: joins the memory cgroup, new session/process group, fresh 0700 scratch
   directory as cwd on the private tmpfs (256 MB, 65536 inodes), scrubbed environment,
   stdin=/dev/null, stdout+stderr to a file capped by RLIMIT_FSIZE, RLIMIT_AS / RLIMIT_CPU /
   RLIMIT_NPROC / RLIMIT_NOFILE / no core, then (as root) drops to a per-worker uid with no groups,
   so it cannot signal, ptrace or read the memory of the parent or zygote, and cannot write outside
   its scratch directory; in its PID namespace it sees only its own processes. It runs
   `runner.run_job`, which writes one JSON line per event to an inherited pipe (the *channel*, not
   stdout).

Time limits do not depend on machine load: the zygote charges the child its CPU time
(`timeout_s`) and its *active* time, wall clock minus the time it spent runnable but waiting for a
core (`/proc/<pid>/schedstat`), limited to `timeout_s * wall_factor` (sleeps, blocked I/O); an
absolute wall-clock ceiling (`timeout_s * ceiling_factor`) bounds everything else.

Verdicts: for `assert call(...) == literal` (and `is_same_list/is_same_tree(call, list_node(..))`),
the child only reports the *value* of `call(...)` in a restricted format; the parent decodes it as
data and compares it to the expected value it kept. Forging the channel therefore gains nothing: to
pass, the bytes must be the right answers. Printing fake records (stdout is not read), sys.exit(0) /
os._exit(0) before the asserts (records missing), objects with `__eq__` always True (not
encodable), and patched builtins/AssertionError (no assert is evaluated in the child) all fail.

Residual risk (documented in README "Grader isolation"): statement steps — the hinted evaluator call
and asserts not of the two shapes above (none in the real data) — report success as the job's nonce
written after the statement returns. Code in the same process can find the nonce and the channel fd
(frames, gc, /proc/self/fd) and forge success. For the evaluator call this gains nothing a plain
`def run_tests(): pass` would not; for odd-shaped asserts it is a real, logged weakness.

On timeout or when the channel closes, the child's process group is killed and, with uid isolation,
every process of the worker's uid (`kill(-1)` from a helper that setuid()s to it), which also catches
descendants that escaped with setsid(). The zygote is a child subreaper and reaps them.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probe.env.sandbox_isolation import SYSTEM_DIRS, SandboxConfig, _needed_paths  # noqa: F401
from probe.env.zygote import _read_msg, _write_msg, serve

__all__ = ["SYSTEM_DIRS", "ExecResult", "Sandbox", "SandboxConfig", "serve"]
log = logging.getLogger(__name__)


@dataclass
class ExecResult:
    """What came back from one job: channel records (untrusted data) and how the child ended."""

    records: list[dict] = field(default_factory=list)
    timed_out: bool = False
    overflow: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the child's user+system CPU time
    active_s: float = 0.0  # wall_s minus the time the child waited for a core
    exit_status: int | None = None
    output_tail: str = ""
    sandbox_error: str | None = None
    oom_killed: bool = False  # the kernel killed a process of the job for the tree memory limit
    limit: str | None = None  # the time limit that ended the job: "cpu", "active" or "ceiling"




# ----- parent side ------------------------------------------------------------------------------

def _scrubbed_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": root,
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}


class Sandbox:
    """Parent-side handle to one zygote. Not thread-safe: one job at a time per instance."""

    def __init__(self, config: SandboxConfig | None = None, slot: int = 0):
        self.config = config or SandboxConfig()
        self.slot = slot
        self.proc: subprocess.Popen | None = None
        self.capabilities: dict[str, Any] = {}
        self._start()

    def _start(self) -> None:
        cfg = json.dumps(asdict(self.config))
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c",
             "import sys; sys.path.insert(0, sys.argv.pop(1)); import site; site.main(); "
             "from probe.env.zygote import serve; serve()",
             _scrubbed_env()["PYTHONPATH"], str(self.slot), cfg],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_scrubbed_env(),
            start_new_session=True, close_fds=True, cwd="/")
        caps = self._recv(30.0)
        if caps is None:
            self.close()
            raise RuntimeError("sandbox zygote failed to start")
        if caps.get("fatal"):
            self.close()
            raise RuntimeError(f"sandbox refused to start: {caps['fatal']}")
        self.capabilities = caps
        log.debug("sandbox slot %d capabilities: %s", self.slot, caps)

    def _recv(self, timeout: float) -> Any:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        try:
            return _read_msg(fd)
        except (OSError, ValueError):
            return None

    def run(self, setup: str, program: str, steps: list[dict], nonce: str,
            timeout_s: float | None = None) -> ExecResult:
        """Run one job; a dead or stuck zygote is replaced and the job reported as failed."""
        job = {"setup": setup, "program": program, "steps": steps, "nonce": nonce,
               "timeout_s": self.config.timeout_s if timeout_s is None else timeout_s}
        if self.proc is None or self.proc.poll() is not None:
            self._restart()
        try:
            assert self.proc is not None and self.proc.stdin is not None
            _write_msg(self.proc.stdin.fileno(), job)
            res = self._recv(job["timeout_s"] * max(self.config.ceiling_factor,
                                                    self.config.wall_factor) + 15.0)
        except OSError:
            res = None
        if res is None:
            log.warning("sandbox slot %d died or hung; restarting it", self.slot)
            self._restart()
            return ExecResult(sandbox_error="SandboxCrash")
        return ExecResult(**res)

    def _restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        """Stop the zygote (its process group, so nothing it started survives)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:  # once reaped, its pid (= pgid) may belong to someone else
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.proc = None
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        """Remove the worker's memory cgroup once its last process is gone (best effort: a
        cgroup still draining is left for the next zygote with the same uid to reuse)."""
        d = self.capabilities.get("memory_cgroup")
        for _ in range(20):
            try:
                if d:
                    os.rmdir(d)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
