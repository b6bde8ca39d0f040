"""The zygote: a trusted server per worker that forks one confined child per job and meters it.

Started by `sandbox.Sandbox` as `python -c '... from probe.env.zygote import serve; serve()'`; it
isolates itself (sandbox_isolation.py), then reads jobs from stdin and answers on stdout with
length-prefixed JSON messages. See sandbox.py for the design and what each process may see.
"""
from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
from types import CodeType
from typing import Any

from probe.env.sandbox_isolation import (SandboxConfig, _isolate, _kill_uid, enter_pid_namespace,
                                         oom_kills, setup_memory_cgroup)

PRELOAD = ("random", "functools", "collections", "string", "math", "datetime", "typing",
           "itertools", "heapq", "bisect", "operator", "json", "re", "copy", "fractions",
           "decimal", "statistics", "array", "sortedcontainers")
CHANNEL_CAP = 64 * 1024 * 1024


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User+system CPU time of `pid` so far (0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _runqueue_wait_seconds(pid: int) -> float | None:
    """Time `pid` spent runnable but waiting for a CPU (schedstat field 2); None if unreadable
    (kernel without CONFIG_SCHED_INFO, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class _Meter:
    """What a child is charged for: CPU time, and wall time minus run-queue wait ("active" time:
    running, sleeping or blocked). Neither grows while other processes keep the cores busy, so a
    verdict does not depend on machine load; the absolute ceiling bounds everything else."""

    def __init__(self, pid: int, t0: float, budget: float, cfg: SandboxConfig):
        self.pid, self.t0, self.budget = pid, t0, budget
        self.active_limit = budget * cfg.wall_factor
        self.ceiling = budget * max(cfg.ceiling_factor, cfg.wall_factor)
        self.wait = 0.0  # last readable value: frozen once the child is a zombie
        self.cpu = 0.0
        self.limit: str | None = None  # which limit ended the job: "cpu", "active", "ceiling"

    def poll(self) -> tuple[bool, float]:
        """(limit exceeded, seconds until the active-time limit could next be reached)."""
        wall = time.monotonic() - self.t0
        wait = _runqueue_wait_seconds(self.pid)
        if wait is not None:
            self.wait = max(self.wait, wait)
        self.cpu = max(self.cpu, _cpu_seconds(self.pid))
        active = wall - self.wait
        self.limit = ("cpu" if self.cpu > self.budget else "active" if active > self.active_limit
                      else "ceiling" if wall > self.ceiling else None)
        return self.limit is not None, max(0.0, min(self.active_limit - active, self.ceiling - wall))

    @property
    def active(self) -> float:
        return time.monotonic() - self.t0 - self.wait


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@functools.lru_cache(maxsize=8)
def _compiled_setup(setup: str) -> CodeType | None:
    """The trusted setup code compiled once per worker (children inherit it on fork); None when it
    does not compile, so the child reports the error as before. Never executed in the zygote."""
    from probe.env import runner
    try:
        return runner.compile_setup(setup)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


def _child(job: dict, cfg: SandboxConfig, scratch: str, chan_w: int, uid: int | None,
           cgroup_fd: int | None) -> None:
    """In the forked child: confine, then run the job. Never returns."""
    import random
    import resource

    from probe.env import runner
    try:
        if cgroup_fd is not None:
            try:
                os.write(cgroup_fd, b"0")  # join the worker's memory cgroup (tree limit)
            except OSError:
                os._exit(72)  # fail closed: the granted tree limit must hold for every job
        os.setsid()
        os.chdir(scratch)
        out = os.open(os.path.join(scratch, "output.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                      0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        chan = 3 + random.SystemRandom().randrange(cfg.max_files - 8)
        if chan != chan_w:
            os.dup2(chan_w, chan)
        os.closerange(3, chan)
        os.closerange(chan + 1, 65536)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        cpu = int(cfg.timeout_s) + 2  # backstop; the zygote enforces timeout_s precisely
        limits = [(resource.RLIMIT_AS, cfg.memory_mb * 1024 * 1024),
                  (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, cfg.max_output_bytes),
                  (resource.RLIMIT_NOFILE, cfg.max_files), (resource.RLIMIT_CORE, 0)]
        limits.append((resource.RLIMIT_NPROC, cfg.max_procs))  # ignored for root: see README
        for what, val in limits:
            resource.setrlimit(what, (val, val))
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch,
                           "TMPDIR": scratch, "LANG": "C.UTF-8"})
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        if cfg.isolate_uid and (os.geteuid() == 0 or os.getuid() == 0):
            os._exit(71)  # fail closed: untrusted code never runs as root
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
        sys.stdin = open(0, "r", closefd=False)
        random.seed()
        runner.run_job(job, chan, _compiled_setup(job["setup"]))
        try:
            sys.stdout.flush()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(0)


def _run_job(job: dict, cfg: SandboxConfig, caps: dict, proto: set[int],
             cgroup_fd: int | None = None) -> dict:
    """Zygote: fork a child for `job`, collect its channel, kill everything it left behind."""
    uid = caps["uid_value"] if caps["uid"] else None
    scratch = tempfile.mkdtemp(prefix="job-", dir=caps["scratch_root"])
    if uid is not None:
        os.chown(scratch, uid, uid)
    os.chmod(scratch, 0o700)
    _compiled_setup(job["setup"])  # before the fork, so every child inherits the code object
    ooms = oom_kills(caps.get("memory_events"))
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for fd in proto:
            os.close(fd)
        _child(job, cfg, scratch, w, uid, cgroup_fd)
    os.close(w)
    meter = _Meter(pid, t0, float(job.get("timeout_s", cfg.timeout_s)), cfg)
    buf, timed_out, overflow = bytearray(), False, False
    while True:
        over, left = meter.poll()
        if over:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], min(left, 0.05))
        if not ready:
            continue
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        buf += chunk
        if len(buf) > CHANNEL_CAP:
            overflow = True
            break
    wall, active = time.monotonic() - t0, meter.active
    os.close(r)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        status = None
    _reap()
    tail = ""
    try:
        with open(os.path.join(scratch, "output.txt"), "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 2000))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    oom = oom_kills(caps.get("memory_events")) > ooms
    records = []
    for line in bytes(buf).split(b"\n"):
        if not line:
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = {"bad": True}
        records.append(rec if isinstance(rec, dict) else {"bad": True})
    return {"records": records, "timed_out": timed_out, "overflow": overflow, "wall_s": wall,
            "cpu_s": meter.cpu, "active_s": active, "exit_status": status, "output_tail": tail,
            "oom_killed": oom, "limit": meter.limit,
            "sandbox_error": "SandboxSetup" if status is not None and os.WIFEXITED(status)
            and os.WEXITSTATUS(status) in (71, 72) and not records else None}


def _read_msg(fd: int) -> Any:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    data = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if data is None else json.loads(data)


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _write_msg(fd: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def serve(argv: list[str] | None = None) -> None:
    """Zygote main loop: `python -c 'from probe.env.zygote import serve; serve()' SLOT CONFIG`."""
    argv = sys.argv[1:] if argv is None else argv
    # argv[0] is the slot: only there to tell zygotes apart in a process listing
    cfg = SandboxConfig(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in json.loads(argv[1]).items()})
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    import importlib
    import probe.env.runner  # noqa: F401 - imported before directories are hidden
    for mod in PRELOAD:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    caps = _isolate(cfg)
    cgroup_fd = setup_memory_cgroup(cfg, caps) if not caps.get("fatal") else None
    if not caps.get("fatal"):
        enter_pid_namespace(cfg, caps)  # from here on, possibly PID 1 of a new namespace
    # run-queue wait is known: time limits do not depend on machine load
    caps["load_independent_time"] = _runqueue_wait_seconds(os.getpid()) is not None
    proto = {proto_in, proto_out, null}  # closed in each child (the cgroup fd: after joining)
    _write_msg(proto_out, caps)
    while True:
        while not select.select([proto_in], [], [], 0.1)[0]:
            _reap()  # orphans of the last job that died after it ended
        job = _read_msg(proto_in)
        if job is None:
            return
        try:
            res = _run_job(job, cfg, caps, proto, cgroup_fd)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            res = {"records": [], "sandbox_error": f"{type(e).__name__}: {e}"}
        _write_msg(proto_out, res)
