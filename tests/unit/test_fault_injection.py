"""Kill -9 anywhere, resume, same result (issue 14 §2); concurrent runs; a full or read-only out/.

The tiny run (`probe run` then `probe grpo` on tests/unit/tiny_world.py, driven by
tests/unit/fault_child.py, which installs the fault hooks in the child only) goes in child
processes, each in its own session. A reference run goes uninterrupted, with a second `probe run`
started on the same out/ while it works (it must wait, then redo nothing). Then a chain of runs on a
fresh out/: each SIGKILLs its whole process group at a chosen event (an artifact written to its temp
file but not renamed, cut to half, or renamed; an optimizer step that has just changed the
parameters in memory; a grading batch under way), two per stage at random, spread over each stage,
plus one run that fails on an (injected) full disk; the next run resumes, and a last one runs to the
end. Its artifacts must equal the reference's: every step file row for row, every manifest minus
timestamps, durations and per-process cache counters, v_hack and δS tensors, the checkpoints (δS,
AdamW state, summaries) and the verdict statistics of probe.checks / probe.checks_grpo. Finally a
real tmpfs, filled up and then remounted read-only in a private mount namespace, must give a clear
error and lose nothing.

HEAVIER than the rest of the unit tier: about 80 s on the 2-core machine (the reference run, the
chain of 18 runs through a fork server that imports torch once, the tmpfs runs; children use one
intra-op thread). FAULT_KILLS_PER_STAGE (default 2) and FAULT_SEED (default 0) choose how many
kills and where.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from tests.unit.fault_child import GRPO_ARMS, GRPO_SEED
from tests.unit.tiny_world import make_tiny_world

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", autouse=True)
def _cpu_exclusive(cpu_exclusive: None) -> None:
    """Its runs grade real code and load both cores: never beside the modules whose labels sit
    near a CPU-time limit (tests/unit/conftest.py says why)."""

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("fault_child.py")
# wall-clock facts, per-process cache counters, and the checkout (it may change while this runs)
VOLATILE = {"created", "seconds", "grade_cache", "git_commit"}
KILLS_PER_STAGE = int(os.environ.get("FAULT_KILLS_PER_STAGE", "2"))
SEED = int(os.environ.get("FAULT_SEED", "0"))
RUN_TIMEOUT = 300.0


# -- children ------------------------------------------------------------------------------------

def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("FAULT_KILL", None)
    # Identical results, not close ones, need one intra-op thread and MKL's conditional numerical
    # reproducibility. Without them, under xdist, a projection diagnostic (signed_in, a float32
    # dot product `g @ v0` in probe.project) of the reference and of the resumed run differed in
    # the 7th digit while δS, the AdamW state and every row were identical: MKL's dot product
    # rounds by memory alignment, which differs between processes. Not a resume defect.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MKL_CBWR="COMPATIBLE")
    return {**env, **extra}


@dataclass
class Child:
    events: Path
    log: Path
    proc: subprocess.Popen | None = None  # a subprocess, or
    rc: int | None = None  # the exit code of a fork server's run (-9: SIGKILLed)

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout) if self.proc is not None else self.rc

    def lines(self) -> list[str]:
        return self.events.read_text().splitlines() if self.events.exists() else []

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Children:
    """Every child of a test, and the sandbox zygotes they started: killed in teardown."""
    tmp: Path
    started: list[Child] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # process groups of the fork server's runs
    server: subprocess.Popen | None = None
    n: int = 0

    @property
    def pids_file(self) -> Path:
        return self.tmp / "zygote.pids"

    def _files(self, kill: str | None) -> tuple[Path, Path, dict[str, str]]:
        self.n += 1
        events, log = self.tmp / f"events.{self.n}", self.tmp / f"log.{self.n}"
        extra = {"FAULT_EVENTS": str(events), "FAULT_PIDS": str(self.pids_file)}
        if kill:
            extra["FAULT_KILL"] = kill
        return events, log, extra

    def spawn(self, world: Path, out: Path, *args: str, kill: str | None = None,
              cmd: list[str] | None = None, hold: tuple[str, Path] | None = None) -> Child:
        """A fresh interpreter (a run beside another, or under `cmd`); `hold`: (event, file):
        pause at that event until the file exists."""
        events, log, extra = self._files(kill)
        if hold:
            extra.update(FAULT_HOLD=hold[0], FAULT_RELEASE=str(hold[1]))
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd or [sys.executable, str(CHILD), str(world), str(out), *args],
                                    stdout=fh, stderr=subprocess.STDOUT, env=_env(**extra),
                                    cwd=str(ROOT), start_new_session=True)
        child = Child(events, log, proc=proc)
        self.started.append(child)
        return child

    def run(self, world: Path, out: Path, kill: str | None = None) -> Child:
        """One run, forked by the fork server (started once; see fault_child.py), to its end."""
        if self.server is None:
            self.server = subprocess.Popen([sys.executable, str(CHILD), "--serve"],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=(self.tmp / "server.log").open("wb"),
                                           env=_env(), cwd=str(ROOT), start_new_session=True,
                                           text=True)
        events, log, extra = self._files(kill)
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps({"argv": [str(world), str(out)], "env": extra,
                                            "log": str(log)}) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        assert line, (self.tmp / "server.log").read_text()
        pid = json.loads(line)["pid"]
        self.groups.append(pid)  # it called setsid(): its pid is its group
        watchdog = threading.Timer(RUN_TIMEOUT, _killpg, [pid])
        watchdog.start()
        try:
            rc = json.loads(self.server.stdout.readline())["rc"]
        finally:
            watchdog.cancel()
        return Child(events, log, rc=rc)

    def zygotes_alive(self) -> list[int]:
        if not self.pids_file.exists():
            return []
        return [p for p in map(int, self.pids_file.read_text().split()) if _alive_zygote(p)]

    def kill_all(self) -> None:
        for c in self.started:
            if c.proc is not None and c.proc.poll() is None:
                _killpg(c.proc.pid)
                c.proc.wait(timeout=30)
        if self.server is not None:
            _killpg(self.server.pid)
            self.server.wait(timeout=30)
        for pgid in self.groups:  # reaped by the server; a live group is a run still going
            if Path(f"/proc/{pgid}").exists():
                _killpg(pgid)
        for pid in self.zygotes_alive():
            _killpg(pid)  # a zygote leads its own session: its group is what it started


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _alive_zygote(pid: int) -> bool:
    """A live (not zombie) process running the sandbox zygote."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"probe.env.zygote" in cmd


@pytest.fixture
def children(tmp_path: Path):
    kids = Children(tmp_path)
    yield kids
    kids.kill_all()


# -- comparing two out/ trees -------------------------------------------------------------------

def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_strip(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return ["tensor", str(t.dtype), list(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest()]
    return obj


def _canon(obj: Any) -> str:
    return json.dumps(_strip(obj), sort_keys=True, allow_nan=True, default=repr)


def _content(path: Path, out: Path) -> str:
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return _canon([json.loads(line) for line in fh])
    if name.endswith(".json"):
        return _canon(json.loads(path.read_text()))
    if name.endswith(".pt"):
        return _canon(torch.load(path, map_location="cpu", weights_only=False))
    if name.endswith(".safetensors"):  # the header's key order is not stable between processes
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return _canon({"metadata": fh.metadata(),
                           "tensors": {k: fh.get_tensor(k) for k in sorted(fh.keys())}})
    if name == "LATEST":  # an absolute path: the run directory's name is what must agree
        return Path(path.read_text().strip()).name
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(out: Path, under: str = "") -> dict[str, str]:
    """Every artifact under `out` (lock files, leftover temp files and symlinks aside), read and
    made comparable."""
    snap = {}
    for p in sorted((out / under).rglob("*")):
        if p.is_symlink() or not p.is_file() or p.name.endswith((".lock", ".tmp")):
            continue
        snap[p.relative_to(out).as_posix()] = _content(p, out)
    return snap


def assert_same_tree(got: dict[str, str], want: dict[str, str], what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: files differ: " \
        f"missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"
    bad = [k for k in want if got[k] != want[k]]
    assert not bad, f"{what}: {len(bad)} artifacts differ from the uninterrupted run, e.g. {bad[:4]}"


def verdict_stats(out: Path) -> str:
    """The statistics every requirement check reads, as one comparable string."""
    from probe import checks, checks_grpo

    paths = checks.load_paths(out / "probe_distill" / "latest")
    grpo_root = (out / "probe_grpo" / "latest").resolve()
    manifests = checks_grpo.load_manifests(grpo_root, GRPO_ARMS, [GRPO_SEED])
    fns: dict[str, Callable[[], Any]] = {
        "r1": lambda: checks.r1_stats(paths), "r2": lambda: checks.r2_stats(paths),
        "r3": lambda: checks.r3_stats(paths), "r4": lambda: checks.r4_stats(paths),
        "behaviour": lambda: checks.behaviour_stats(paths),
        "controls": lambda: checks.control_stats(paths),
        "rise": lambda: checks_grpo.rise(manifests["vanilla"], (0,), (2,)),
        "slowdown": lambda: checks_grpo.paired_slowdown(manifests["vanilla"],
                                                        manifests[GRPO_ARMS[-1]], 2),
        "saturation": lambda: checks_grpo.saturation(manifests, 0.2, 0.9, 2)}
    res = {}
    for name, fn in fns.items():
        try:
            res[name] = fn()
        except Exception as e:  # the same failure in both runs is the same verdict
            res[name] = f"raised {type(e).__name__}: {e}"
    return _canon(res)


# -- the reference run (uninterrupted), with a concurrent second `probe run` --------------------

@dataclass
class Reference:
    world: Path  # the world's JSON spec
    out: Path
    events: list[str]
    snap: dict[str, str]
    stats: str
    waiter_events: Path  # the second `probe run`, started while the first held the lock
    waiter_log: Path
    seconds: float


def _stage(label: str) -> str:
    """'teacher_pool', 'v_hack', 'vanilla_seed41', 'grpo/projected_seed5', ... of an event."""
    parts = label.split(":", 1)[1].split("/")
    name = parts[2] if len(parts) > 3 else "student_start" if "student_start" in parts[-1] \
        else parts[-1]
    if parts[0] == "probe_grpo":
        name = "grpo/" + (parts[3] if parts[1] == "teacher_rows" else name)
    return name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """Made once per test run, whichever xdist worker comes first (the others wait and read it)."""
    from filelock import FileLock

    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    tmp = tmp_path_factory.getbasetemp().parent / f"fault_reference-{run_id}"
    tmp.mkdir(exist_ok=True)
    with FileLock(str(tmp) + ".lock"):
        done = tmp / "reference.json"
        if not done.exists():
            done.write_text(json.dumps(_make_reference(tmp), default=str))
    ref = json.loads(done.read_text())
    return Reference(**{k: Path(v) if k in ("world", "out", "waiter_events", "waiter_log")
                        else v for k, v in ref.items()})


def _make_reference(tmp: Path) -> dict[str, Any]:
    world = make_tiny_world(tmp / "world")
    spec = tmp / "world.json"
    spec.write_text(json.dumps(asdict(world.config)))
    kids = Children(tmp)
    try:
        out = tmp / "out"
        t0 = time.perf_counter()
        # the first run stops at its first teacher step (holding the lock) until the second
        # says it is waiting for that lock
        release = tmp / "release"
        first = kids.spawn(spec, out, hold=("G", release))
        while "G" not in first.lines():
            assert first.proc.poll() is None, first.text()
            time.sleep(0.05)
        second = kids.spawn(spec, out, "phase1")
        deadline = time.monotonic() + RUN_TIMEOUT
        while "waiting for it" not in second.text() and time.monotonic() < deadline:
            assert second.proc.poll() is None, second.text()
            time.sleep(0.05)
        release.touch()
        assert first.wait() == 0, first.text()
        seconds = time.perf_counter() - t0
        assert second.wait() == 0, second.text()
        return {"world": spec, "out": out, "events": first.lines(), "snap": snapshot(out),
                "stats": verdict_stats(out), "waiter_events": second.events,
                "waiter_log": second.log, "seconds": seconds}
    finally:
        kids.kill_all()


def test_concurrent_probe_run_waits_and_redoes_nothing(reference: Reference):
    """A second `probe run` on the same out/ while the first is working waits for it (and says
    so), then finds every stage complete: it writes no step file, checkpoint or tensor."""
    waiter = Child(reference.waiter_events, reference.waiter_log)
    assert "waiting for it" in waiter.text() and "probe_distill.lock" in waiter.text()
    written = {ln.split("/")[-1] for ln in waiter.lines() if ln.startswith("A:")}
    assert written <= {"config.json", "LATEST", "stage_key.txt"}, written
    assert not [ln for ln in waiter.lines() if ln in ("O", "G")]
    # the tree both wrote into is complete and reads back
    assert any(k.endswith("projected_seed41/manifest.json") for k in reference.snap)
    assert any(k.endswith(f"projected_refresh_seed{GRPO_SEED}/manifest.json") for k in reference.snap)


# -- the kill chain ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    anchor: str
    offset: int
    mode: str
    ref_index: int

    @property
    def spec(self) -> str:
        return f"{self.anchor}|{self.offset}|{self.mode}"


def plan(events: list[str], per_stage: int, rng: random.Random) -> list[Fault]:
    """`per_stage` faults in every stage, at random commits of it (offsets reach the optimizer
    steps, grading batches and checkpoint writes between commits), in run order."""
    counts: dict[str, int] = {}
    for e in events:
        counts[e] = counts.get(e, 0) + 1
    by_stage: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        if e[:2] in ("A:", "B:") and counts[e] == 1 and not e.endswith(("config.json", "LATEST")):
            by_stage.setdefault(_stage(e), []).append(i)
    picks = []
    for stage, idx in sorted(by_stage.items()):
        n = min(per_stage, len(idx))  # one pick in each of n stretches of the stage: spread out
        picks += [(rng.choice(idx[len(idx) * j // n:len(idx) * (j + 1) // n]),
                   rng.choice(("kill", "mid"))) for j in range(n)]
    # and one run of the chain fails on a full disk (injected at a replay step's write)
    i = rng.choice([i for i in by_stage["projected_seed41"] if events[i].startswith("B:")])
    picks = sorted([p for p in picks if p[0] != i] + [(i, "enospc")])
    faults = []
    for k, (i, mode) in enumerate(picks):
        # the fault fires at most 3 events after its anchor, before the next anchor and the end
        room = (picks[k + 1][0] if k + 1 < len(picks) else len(events)) - i - 1
        offset = 0 if mode == "enospc" else min(rng.randrange(4), room)
        faults.append(Fault(events[i], offset, mode, i))
    return sorted(faults, key=lambda f: f.ref_index)


def _in_progress(child: Child, at: str, ref: list[str]) -> str:
    """The stage a kill interrupted: that of the commit it hit or, for an optimizer step or a
    grading batch, of the reference's next commit after the last one this run made."""
    if at[:2] in ("A:", "B:"):
        return _stage(at)
    skip = ("config.json", "LATEST", "stage_key.txt")
    last = [ln for ln in child.lines() if ln[:2] == "A:" and ref.count(ln) == 1]
    start = ref.index(last[-1]) + 1 if last else 0
    nxt = [e for e in ref[start:] if e[:2] == "A:" and not e.endswith(skip)]
    return _stage(nxt[0]) if nxt else "end"


def _fired(child: Child) -> str | None:
    return next((ln.split(":", 2)[2] for ln in child.lines() if ln.startswith("K:")), None)


def _wait_zygotes_gone(kids: Children, timeout: float = 15.0) -> list[int]:
    t = time.monotonic() + timeout
    while kids.zygotes_alive() and time.monotonic() < t:
        time.sleep(0.1)
    return kids.zygotes_alive()


def test_kill_anywhere_then_resume_gives_the_same_result(reference: Reference, children: Children,
                                                        tmp_path: Path):
    rng = random.Random(SEED)
    faults = plan(reference.events, KILLS_PER_STAGE, rng)
    ref_index = {e: i for i, e in enumerate(reference.events) if reference.events.count(e) == 1}
    out = tmp_path / "out"
    progress, killed, enospc = -1, [], False
    for fault in faults:
        if fault.ref_index <= progress:  # already done by the previous run: not a fault any more
            continue
        child = children.run(reference.world, out, kill=fault.spec)
        rc = child.wait()
        at = _fired(child)
        assert at is not None, f"fault {fault} never fired: the resumed run took another path " \
            f"(rc {rc})\n{child.text()[-3000:]}"
        if fault.mode == "enospc":
            enospc = True
            text = child.text()
            assert rc == 3, text[-3000:]
            assert "cannot write" in text and "the disk is full" in text and str(out) in text, text
            assert "Traceback" not in text, text[-3000:]
        else:
            assert rc == -signal.SIGKILL, f"{fault}: rc {rc}\n{child.text()[-3000:]}"
            mode = fault.mode if at.startswith("B:") else "kill"  # `mid` cuts a temp file short
            killed.append((mode, at, _in_progress(child, at, reference.events)))
        assert not _wait_zygotes_gone(children), "a sandbox zygote outlived its killed parent"
        progress = max([ref_index.get(ln, -1) for ln in child.lines()] + [progress])
    last = children.run(reference.world, out)
    assert last.wait() == 0, last.text()[-3000:]
    assert _fired(last) is None
    per_stage: dict[str, int] = {}
    for _, at, stage in killed:
        per_stage[stage] = per_stage.get(stage, 0) + 1
    print(f"\n{len(killed)} kills survived (+1 disk full), per stage {per_stage}: " +
          ", ".join(f"{m} at {a}" for m, a, _ in killed))
    assert enospc and len(per_stage) >= 7, per_stage  # every stage, not a few
    assert len(killed) >= len(faults) - 1, f"faults skipped: {len(killed)} of {len(faults)} fired"
    assert_same_tree(snapshot(out), reference.snap, "after kills and resumes")
    assert verdict_stats(out) == reference.stats


# -- disk full and read-only out/ ------------------------------------------------------------------

def test_write_failure_names_the_path_and_keeps_the_old_file(tmp_path: Path, monkeypatch):
    """In-process: a full disk inside a write (OSError, or a library's own error type while the
    file system reports no space) raises OutputWriteError naming the file and the problem; the
    previous version stays valid and no temp file is left."""
    import probe.io as io
    from probe.artifacts import read_rows, write_rows

    target = tmp_path / "stage" / "step_000.jsonl.gz"
    write_rows(target, [{"a": 1}])

    def full(*a: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gzip, "open", full)
    with pytest.raises(io.OutputWriteError, match=r"cannot write .*step_000\.jsonl\.gz: the disk "
                                                  r"is full") as e:
        write_rows(target, [{"a": 2}])
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    monkeypatch.undo()
    assert read_rows(target) == [{"a": 1}]
    monkeypatch.setattr(io, "_disk_problem", lambda d: (errno.ENOSPC, "No space left on device"))
    with pytest.raises(io.OutputWriteError, match="state.pt: the disk is full"):
        with io.atomic_path(tmp_path / "stage" / "state.pt"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0")
    monkeypatch.setattr(io, "_disk_problem", lambda d: None)
    with pytest.raises(RuntimeError):  # not a disk problem: the error as it was
        with io.atomic_path(tmp_path / "stage" / "state.pt"):
            raise RuntimeError("a bug")
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["step_000.jsonl.gz"]


def _can_mount_tmpfs(tmp: Path) -> str | None:
    """None if this process may mount a tmpfs in a private mount namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    d = tmp / "probe_mount"
    d.mkdir()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs -o size=64k t {d} && mount -o remount,ro {d}"],
                       capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else f"cannot mount a tmpfs: {r.stderr.strip()}"


def test_full_then_read_only_out_is_a_clear_error_and_loses_nothing(reference: Reference,
                                                                    children: Children,
                                                                    tmp_path: Path):
    """`probe run` on a tmpfs too small for the run fails naming the file and "the disk is full";
    every file it wrote is valid and equals the reference's. Remounted read-only, a rerun fails
    naming "read-only" and changes nothing. Remounted writable and larger, a rerun completes to the
    reference's Phase 1 artifacts. (A real tmpfs, in a private mount namespace: root ignores file
    permissions, so a chmod 0555 directory would show nothing.)"""
    why = _can_mount_tmpfs(tmp_path)
    if why:
        pytest.skip(f"needs a private mount namespace: {why}")
    phase1 = {k: v for k, v in reference.snap.items() if k.startswith("probe_distill/")}
    used = sum(-(-(reference.out / k).stat().st_size // 4096) * 4096 for k in phase1)
    size_k = max(64, used // 2 // 1024)
    out, save = tmp_path / "out", tmp_path / "save"
    out.mkdir()
    py = f"{sys.executable} {CHILD} {reference.world} {out} phase1"
    script = f"""
set -u
mount -t tmpfs -o size={size_k}k probe-full {out} || exit 90
{py} > {save}/full.log 2>&1; echo $? > {save}/full.rc
mkdir -p {save}/full && cp -a {out}/. {save}/full/
mount -o remount,ro {out} || exit 91
{py} > {save}/ro.log 2>&1; echo $? > {save}/ro.rc
mkdir -p {save}/ro && cp -a {out}/. {save}/ro/
mount -o remount,rw,size=256m {out} || exit 92
{py} > {save}/resume.log 2>&1; echo $? > {save}/resume.rc
mkdir -p {save}/final && cp -a {out}/. {save}/final/
"""
    save.mkdir()
    child = children.spawn(reference.world, out, cmd=["unshare", "-m", "--propagation", "private",
                                                      "sh", "-c", script])
    assert child.wait() == 0, child.text()
    full, ro = (save / "full.log").read_text(), (save / "ro.log").read_text()
    assert (save / "full.rc").read_text().strip() == "3", full[-3000:]
    assert "cannot write" in full and "the disk is full" in full and str(out) in full, full[-3000:]
    assert "Traceback" not in full, full[-3000:]
    written = snapshot(save / "full")
    got = {k: v for k, v in written.items() if k.startswith("probe_distill/")}
    steps = [k for k in got if k.endswith(".jsonl.gz")]
    assert steps, "the disk filled before any step file: the test shows nothing"
    assert got.keys() < phase1.keys(), "the run was not cut short"
    for k in got:  # (a checkpoint is of its step, not the last; it was read back above)
        if not k.endswith(("config.json", "LATEST", "state.pt")):
            assert got[k] == phase1[k], f"{k} written on a full disk differs from the reference"
    assert (save / "ro.rc").read_text().strip() == "3", ro[-3000:]
    assert "cannot write" in ro and "read-only" in ro and "Traceback" not in ro, ro[-3000:]
    assert snapshot(save / "ro") == written, "a run on a read-only out/ changed something"
    assert (save / "resume.rc").read_text().strip() == "0", (save / "resume.log").read_text()
    final = {k: v for k, v in snapshot(save / "final").items() if k.startswith("probe_distill/")}
    assert_same_tree(final, phase1, "after disk full, read-only, resume")
