"""Process sandbox for untrusted programs: a pre-forked "zygote" per worker, one fresh child per job.

Design (why it cannot be fooled by the code it runs)
---------------------------------------------------
Three processes, three trust levels:

1. The *parent* (the grader, in the caller's process) holds the expected answers. It never runs
   model code and never sends expected values anywhere. It reads results as data and compares.
2. A *zygote* per worker: a trusted `python -c` process started with a scrubbed environment. It
   pre-imports the modules `setup_code` needs, then (when running as root) enters its own network
   namespace (no interfaces but a down loopback: no network) and mount namespace in which private,
   root-owned tmpfs are mounted over every top-level directory except the system ones
   (`SYSTEM_DIRS`: an allowlist, so a checkout at an unusual path such as `/check/...` is hidden
   too), with only the Python installation bound back read-only; files at / read as empty. It receives jobs (setup, program, expressions to
   evaluate; never expected values) over a pipe and forks one child per job.
3. A *child* per job: new session/process group, fresh 0700 scratch directory as cwd on the private
   tmpfs, scrubbed environment, stdin=/dev/null, stdout+stderr to a file capped by RLIMIT_FSIZE,
   RLIMIT_AS / RLIMIT_CPU / RLIMIT_NPROC / RLIMIT_NOFILE / no core, then (as root) drops to a
   per-worker uid with no groups, so it cannot signal, ptrace or read the memory of the parent or
   zygote, and cannot write outside its scratch directory. It runs `runner.run_job`, which writes
   one JSON line per event to an inherited pipe (the *channel*, not stdout).

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

import ctypes
import functools
import json
import logging
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

log = logging.getLogger(__name__)

# Top-level directories graded code may still see; every other entry of / is hidden (allowlist,
# not a denylist: the repo or the data may live anywhere, e.g. CI checks out under /check).
# nix and gnu are read-only package stores a Python installation may load libraries from.
SYSTEM_DIRS = frozenset({"usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "etc", "proc",
                         "sys", "dev", "nix", "gnu"})
ALSO_HIDE = ("/dev/shm",)
PRELOAD = ("random", "functools", "collections", "string", "math", "datetime", "typing",
           "itertools", "heapq", "bisect", "operator", "json", "re", "copy", "fractions",
           "decimal", "statistics", "array", "sortedcontainers")
CHANNEL_CAP = 64 * 1024 * 1024
_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class SandboxConfig:
    """Limits per job and isolation switches (each falls back gracefully when the OS refuses)."""

    timeout_s: float = 3.0  # CPU seconds of the child (load-independent), see wall_factor
    # limit on the child's *active* time (wall clock minus time spent runnable but waiting for a
    # core, from /proc/<pid>/schedstat): timeout_s * wall_factor bounds sleeps and blocked I/O
    wall_factor: float = 2.0
    # absolute wall-clock ceiling, timeout_s * ceiling_factor, whatever the load: nothing hangs
    ceiling_factor: float = 20.0
    memory_mb: int = 1024
    max_output_bytes: int = 1_000_000
    max_procs: int = 16
    max_files: int = 256
    isolate_uid: bool = True
    isolate_fs: bool = True
    isolate_net: bool = True
    uid_base: int = 61000
    hide_paths: tuple[str, ...] = ()


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


# ----- zygote side ------------------------------------------------------------------------------

def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    if _libc().mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {dst}: {os.strerror(err)}")


def _needed_paths() -> list[str]:
    """Directories the child must still see: the Python installation and its packages."""
    import site
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(
        sys.executable))}
    try:
        paths.update(site.getsitepackages())
    except AttributeError:
        pass
    return sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})


def _top_level_to_hide() -> tuple[list[str], list[str]]:
    """(directories, regular files) at / outside `SYSTEM_DIRS`, skipping any entry that is (or
    links into, or contains) a system directory: a link `/x -> /usr` must not cover libc."""
    system = [os.path.realpath("/" + n) for n in SYSTEM_DIRS if os.path.exists("/" + n)]
    dirs, files = [], []
    for n in sorted(os.listdir("/")):
        if n in SYSTEM_DIRS:
            continue
        r = os.path.realpath("/" + n)
        if r == "/" or any(r == s or r.startswith(s + "/") or s.startswith(r + "/")
                           for s in system):
            continue
        if os.path.isdir(r):
            dirs.append(r)
        elif os.path.isfile(r):
            files.append(r)
    return dirs, files


def _paths_to_hide(extra: list[str]) -> tuple[list[str], list[str]]:
    """Directories (top-level ones outside `SYSTEM_DIRS`, `/dev/shm`, the checkout this module
    lives in, in case it sits under a system directory, and the caller's extras) and files."""
    dirs, files = _top_level_to_hide()
    checkout = os.path.realpath(Path(__file__).resolve().parents[2])
    return ["/tmp"] + dirs + list(ALSO_HIDE) + [checkout] + extra, files


def _hide_files(files: list[str]) -> list[str]:
    """Bind /dev/null (read-only) over each file: it reads as empty. Best effort per file: one
    odd file must not cost the directory isolation (a file left readable is logged)."""
    hidden = []
    for f in files:
        try:
            _mount("/dev/null", f, None, _MS_BIND, None)
            _mount(None, f, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)
            hidden.append(f)
        except OSError as e:
            log.warning("sandbox: %s stays readable (%s)", f, e)
    return hidden


def _hide(paths: list[str], keep: list[str]) -> list[str]:
    """Mount a root-owned tmpfs over each path, binding `keep` paths back read-only."""
    hidden = []
    for h in paths:
        h = os.path.realpath(h)
        inside_keep = any(h == k or h.startswith(k.rstrip("/") + "/") for k in keep)
        if h == "/" or h in hidden or not os.path.isdir(h) or inside_keep:
            continue
        inner = [k for k in keep if k.startswith(h.rstrip("/") + "/")]
        fds = [os.open(k, os.O_PATH | os.O_DIRECTORY) for k in inner]
        size = "512m" if h == "/tmp" else "1m"
        try:
            _mount("tmpfs", h, "tmpfs", 0, f"mode=0755,size={size}")
        except OSError as e:
            if h == "/tmp":  # the scratch root: without it there is no fs isolation at all
                raise
            log.warning("sandbox: %s stays visible (%s)", h, e)  # the others are still hidden
            for fd in fds:
                os.close(fd)
            continue
        for k, fd in zip(inner, fds):
            os.makedirs(k, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", k, None, _MS_BIND | _MS_REC, None)
            _mount(None, k, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)
            os.close(fd)
        hidden.append(h)
    return hidden


def _isolate(cfg: SandboxConfig) -> dict[str, Any]:
    """Enter network/mount namespaces and hide directories; report what worked."""
    caps: dict[str, Any] = {"net": False, "fs": False, "uid": False, "hidden": [],
                            "scratch_root": None, "root": os.geteuid() == 0,
                            # run-queue wait is known: time limits do not depend on machine load
                            "load_independent_time": _runqueue_wait_seconds(os.getpid()) is not None}
    libc = _libc()
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # before the mount namespace hides /var and /run: every zygote on the host must see the lock
    claim = _claim_uid(cfg) if cfg.isolate_uid and caps["root"] else None
    flags = (_CLONE_NEWNET if cfg.isolate_net else 0) | (_CLONE_NEWNS if cfg.isolate_fs else 0)
    if flags and caps["root"]:
        if libc.unshare(flags) == 0:
            caps["net"] = cfg.isolate_net
            if cfg.isolate_fs:
                try:
                    _mount("none", "/", None, _MS_REC | _MS_PRIVATE, None)
                    keep = _needed_paths()
                    extra = [os.path.realpath(p) for p in cfg.hide_paths]
                    dirs, files = _paths_to_hide(extra)
                    caps["hidden"] = _hide(dirs, keep)
                    caps["hidden_files"] = _hide_files(files)
                    caps["fs"] = "/tmp" in caps["hidden"]
                    if caps["fs"]:
                        caps["scratch_root"] = "/tmp"
                except OSError as e:
                    caps["fs_error"] = str(e)
        else:
            caps["ns_error"] = os.strerror(ctypes.get_errno())
    if caps["scratch_root"] is None:
        caps["scratch_root"] = tempfile.mkdtemp(prefix="probe-sandbox-")
        os.chmod(caps["scratch_root"], 0o755)
    # Dropping to another uid needs root and a Python installation that uid can read.
    if claim is not None:
        caps["uid_value"], caps["uid_lock_fd"] = claim
        for _ in range(3):  # retried: a probe must not be mistaken for a refusal
            probe = os.fork()
            if probe == 0:
                try:
                    os.setgroups([])
                    os.setresgid(claim[0], claim[0], claim[0])
                    os.setresuid(claim[0], claim[0], claim[0])
                    os._exit(0 if os.access(os.__file__, os.R_OK) else 1)
                except BaseException:  # noqa: BLE001
                    os._exit(1)
            if os.waitpid(probe, 0)[1] == 0:
                caps["uid"] = True
                break
    if cfg.isolate_uid and caps["root"] and not caps["uid"]:
        # Fail closed: never run untrusted code as root (it could kill(-1) the whole machine).
        caps["fatal"] = "running as root but cannot drop to an unprivileged uid"
    return caps


def _claim_uid(cfg: SandboxConfig) -> tuple[int, int] | None:
    """Reserve a uid no other live zygote on this host uses (flock held for the zygote's life).

    Two graders (e.g. pytest-xdist workers) must never share a uid: cleanup kills every process of
    the uid, and RLIMIT_NPROC counts per uid.
    """
    import fcntl
    lockdir = "/var/lock/probe-sandbox" if os.path.isdir("/var/lock") else "/dev/shm/probe-sandbox"
    try:
        os.makedirs(lockdir, mode=0o700, exist_ok=True)
    except OSError:
        return None
    for uid in range(cfg.uid_base, cfg.uid_base + 4096):
        fd = os.open(os.path.join(lockdir, f"{uid}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    return None


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (kill(-1) from a helper running as that uid)."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(100):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    os._exit(0)
        finally:
            os._exit(0)
    os.waitpid(helper, 0)


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

    def poll(self) -> tuple[bool, float]:
        """(limit exceeded, seconds until the active-time limit could next be reached)."""
        wall = time.monotonic() - self.t0
        wait = _runqueue_wait_seconds(self.pid)
        if wait is not None:
            self.wait = max(self.wait, wait)
        self.cpu = max(self.cpu, _cpu_seconds(self.pid))
        active = wall - self.wait
        over = self.cpu > self.budget or active > self.active_limit or wall > self.ceiling
        return over, max(0.0, min(self.active_limit - active, self.ceiling - wall))

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


def _child(job: dict, cfg: SandboxConfig, scratch: str, chan_w: int, uid: int | None) -> None:
    """In the forked child: confine, then run the job. Never returns."""
    import random
    import resource

    from probe.env import runner
    try:
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


def _run_job(job: dict, cfg: SandboxConfig, caps: dict, proto: set[int]) -> dict:
    """Zygote: fork a child for `job`, collect its channel, kill everything it left behind."""
    uid = caps["uid_value"] if caps["uid"] else None
    scratch = tempfile.mkdtemp(prefix="job-", dir=caps["scratch_root"])
    if uid is not None:
        os.chown(scratch, uid, uid)
    os.chmod(scratch, 0o700)
    _compiled_setup(job["setup"])  # before the fork, so every child inherits the code object
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for fd in proto:
            os.close(fd)
        _child(job, cfg, scratch, w, uid)
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
            "cpu_s": meter.cpu, "active_s": active, "exit_status": status, "output_tail": tail}


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
    """Zygote main loop: `python -c 'from probe.env.sandbox import serve; serve()' SLOT CONFIG`."""
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
    proto = {proto_in, proto_out, null}
    _write_msg(proto_out, caps)
    while True:
        while not select.select([proto_in], [], [], 0.1)[0]:
            _reap()  # orphans of the last job that died after it ended
        job = _read_msg(proto_in)
        if job is None:
            return
        try:
            res = _run_job(job, cfg, caps, proto)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            res = {"records": [], "sandbox_error": f"{type(e).__name__}: {e}"}
        _write_msg(proto_out, res)


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
             "from probe.env.sandbox import serve; serve()",
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

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
