"""Isolation of a sandbox zygote: namespaces, hidden directories, the per-worker uid.

Called once per zygote, before it serves jobs (see sandbox.py for the design). Each step falls
back gracefully where the OS refuses, and `_isolate` reports what was granted (`capabilities`).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

log = logging.getLogger(__name__)

SYSTEM_DIRS = frozenset({"usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "etc", "proc",
                         "sys", "dev", "nix", "gnu"})
ALSO_HIDE = ("/dev/shm",)
_CLONE_NEWNS, _CLONE_NEWNET, _CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_PR_SET_PDEATHSIG = 1
_NO_PROC_EXIT = 75  # the first process of a new PID namespace could not mount its /proc
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class SandboxConfig:
    """Limits per job and isolation switches (each falls back gracefully when the OS refuses)."""

    timeout_s: float = 3.0  # CPU seconds of the child (load-independent), see wall_factor
    # limit on the child's *active* time (wall clock minus time spent runnable but waiting for a
    # core, from /proc/<pid>/schedstat): timeout_s * wall_factor bounds sleeps and blocked I/O
    wall_factor: float = 2.0
    # absolute wall-clock ceiling, timeout_s * ceiling_factor: nothing hangs. Only starvation
    # reaches it (CPU and active time bound everything else), so it is generous: a child that gets
    # 1/50 of a core on an overloaded machine must still finish a 2 s solution
    ceiling_factor: float = 100.0
    memory_mb: int = 1024
    max_output_bytes: int = 1_000_000
    max_procs: int = 16
    max_files: int = 256
    isolate_uid: bool = True
    isolate_fs: bool = True
    isolate_net: bool = True
    isolate_pid: bool = True  # own PID namespace with a fresh /proc (needs the mount namespace)
    tree_memory: bool = True  # memory_mb for the child's whole process tree (a memory cgroup)
    uid_base: int = 61000
    hide_paths: tuple[str, ...] = ()


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
        # /tmp holds the scratch dirs: bounded in bytes and inodes (a disk filler gets ENOSPC)
        size = "size=256m,nr_inodes=65536" if h == "/tmp" else "size=1m"
        try:
            _mount("tmpfs", h, "tmpfs", 0, f"mode=0755,{size}")
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
                            "scratch_root": None, "root": os.geteuid() == 0}
    libc = _libc()
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # before the mount namespace hides /var and /run: every zygote on the host must see the lock
    claim = _claim_uid(cfg) if cfg.isolate_uid and caps["root"] else None
    want_ns = cfg.isolate_fs or cfg.isolate_pid  # a PID namespace needs its own /proc mount
    flags = (_CLONE_NEWNET if cfg.isolate_net else 0) | (_CLONE_NEWNS if want_ns else 0)
    if flags and caps["root"]:
        if libc.unshare(flags) == 0:
            caps["net"] = cfg.isolate_net
            if want_ns:
                try:
                    _mount("none", "/", None, _MS_REC | _MS_PRIVATE, None)
                    caps["mount_ns"] = True
                except OSError as e:
                    caps["fs_error"] = str(e)
            if cfg.isolate_fs and caps.get("mount_ns"):
                try:
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
        caps["uid_value"] = claim
        for _ in range(3):  # retried: a probe must not be mistaken for a refusal
            probe = os.fork()
            if probe == 0:
                try:
                    os.setgroups([])
                    os.setresgid(claim, claim, claim)
                    os.setresuid(claim, claim, claim)
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


_UID_LOCK: list[filelock.BaseFileLock] = []  # held for the zygote's life (inherited on fork)


def _claim_uid(cfg: SandboxConfig) -> int | None:
    """Reserve a uid no other live zygote on this host uses (a lock file held for the zygote's
    life; the OS drops it when the zygote dies, however it dies).

    Two graders (e.g. pytest-xdist workers) must never share a uid: cleanup kills every process of
    the uid, and RLIMIT_NPROC counts per uid.
    """
    lockdir = "/var/lock/probe-sandbox" if os.path.isdir("/var/lock") else "/dev/shm/probe-sandbox"
    try:
        os.makedirs(lockdir, mode=0o700, exist_ok=True)
    except OSError:
        return None
    for uid in range(cfg.uid_base, cfg.uid_base + 4096):
        # no soft-lock fallback (a stale file would outlive a killed zygote); never unlinked
        # (unlinking a lock file another process has open lets two holders in)
        lock = filelock.FileLock(os.path.join(lockdir, f"{uid}.lock"), mode=0o600, blocking=False,
                                 thread_local=False, fallback_to_soft=False,
                                 preserve_lock_file=True)
        try:
            lock.acquire()
        except (filelock.Timeout, OSError):
            continue
        _UID_LOCK.append(lock)
        return uid
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


def enter_pid_namespace(cfg: SandboxConfig, caps: dict[str, Any]) -> None:
    """Continue the zygote as PID 1 of a new PID namespace, so its children (the graded code) see
    and can signal only processes of that namespace.

    `unshare(CLONE_NEWPID)` only moves future children, so the zygote forks: the new process (PID
    1 there, an init that reaps orphans) mounts a fresh /proc with `hidepid=invisible` (a child then
    sees only its own uid's processes) and returns to serve jobs; the original process waits and
    exits with it. Where /proc cannot be mounted (the zygote's own metering reads it) or the
    namespace is refused, the original process stays in the host namespace and reports why.
    Needs root and the private mount namespace (the new /proc must not cover the host's).
    """
    caps["pid"] = False
    if not (cfg.isolate_pid and caps["root"] and caps.get("mount_ns")):
        return
    libc = _libc()
    try:
        own = os.open("/proc/self/ns/pid", os.O_RDONLY)  # to come back if /proc cannot be mounted
    except OSError as e:
        caps["pid_error"] = str(e)
        return
    if libc.unshare(_CLONE_NEWPID) != 0:
        caps["pid_error"] = os.strerror(ctypes.get_errno())
        os.close(own)
        return
    inner = os.fork()
    if inner == 0:
        os.close(own)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # never outlive the outer zygote
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        for opts in ("hidepid=invisible", "hidepid=2", None):
            try:
                _mount("proc", "/proc", "proc", flags, opts)
                caps["pid"], caps["proc"] = True, opts or "plain"
                return
            except OSError as e:
                caps["pid_error"] = str(e)
        os._exit(_NO_PROC_EXIT)
    _, status = os.waitpid(inner, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _NO_PROC_EXIT:
        libc.setns(own, _CLONE_NEWPID)  # later children stay in the host namespace
        os.close(own)
        caps["pid_error"] = "cannot mount /proc for a new PID namespace"
        log.warning("sandbox: no PID namespace (%s)", caps["pid_error"])
        return
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _memory_cgroup_dir() -> tuple[str, str] | None:
    """(directory of this process's memory cgroup, "v2" or "v1"), preferring cgroup v2 where its
    memory controller is offered to this cgroup; None where neither is mounted."""
    try:
        groups = open("/proc/self/cgroup").read().splitlines()
        mounts = [l.split() for l in open("/proc/self/mounts").read().splitlines()]
    except OSError:
        return None
    for line in groups:
        hier, ctrls, path = line.split(":", 2)
        if hier == "0" and ctrls == "":
            for m in mounts:
                if m[2] == "cgroup2":
                    d = m[1] + path
                    try:
                        if "memory" in open(os.path.join(d, "cgroup.controllers")).read().split():
                            return d, "v2"
                    except OSError:
                        pass
    for line in groups:
        hier, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            for m in mounts:
                if m[2] == "cgroup" and "memory" in m[3].split(","):
                    return m[1] + path, "v1"
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def setup_memory_cgroup(cfg: SandboxConfig, caps: dict[str, Any]) -> int | None:
    """A memory cgroup for this worker's jobs, limited to `memory_mb` for the whole process tree
    (swap included where accounted). Returns an fd of its `cgroup.procs` that each child writes "0"
    to before running the job, or None: then memory is bounded per process only (RLIMIT_AS), which
    `caps["memory"]` says. cgroup v2 needs the memory controller delegated to this cgroup's
    children; v1 needs a writable memory hierarchy."""
    caps["memory"] = "rlimit_as per process"
    if not (cfg.tree_memory and caps["root"]):
        return None
    found = _memory_cgroup_dir()
    if found is None:
        caps["memory_error"] = "no memory cgroup mounted"
        return None
    parent, version = found
    name = f"probe-sandbox-{caps.get('uid_value') or os.getpid()}"
    d = os.path.join(parent, name)
    limit = cfg.memory_mb * 1024 * 1024
    try:
        os.makedirs(d, exist_ok=True)
        if version == "v2":
            if not os.path.exists(os.path.join(d, "memory.max")):
                _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
            _write(os.path.join(d, "memory.max"), str(limit))
            try:
                _write(os.path.join(d, "memory.swap.max"), "0")
            except OSError:
                pass
        else:
            _write(os.path.join(d, "memory.limit_in_bytes"), str(limit))
            try:
                _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(limit))
            except OSError:
                pass  # swap not accounted (or no swap): memory alone is limited
        fd = os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY)
    except OSError as e:
        caps["memory_error"] = f"cgroup {version} at {d}: {e}"
        log.info("sandbox: per-process memory limit only (%s)", caps["memory_error"])
        try:
            os.rmdir(d)
        except OSError:
            pass
        return None
    caps["memory"], caps["memory_cgroup"] = f"cgroup {version} tree limit", d
    caps["memory_events"] = os.path.join(d, "memory.events" if version == "v2" else
                                         "memory.oom_control")
    return fd


def oom_kills(events: str | None) -> int:
    """The cgroup's count of OOM kills so far (`oom_kill N` line; 0 when unknown)."""
    if not events:
        return 0
    try:
        for line in open(events).read().splitlines():
            key, _, val = line.partition(" ")
            if key == "oom_kill":
                return int(val)
    except (OSError, ValueError):
        pass
    return 0

