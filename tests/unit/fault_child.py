"""Child process of test_fault_injection.py: `probe run`, then (unless `phase1`) `probe grpo`, on the
tiny world, with an optional fault. The hooks are installed here by monkeypatching, in this child
only: the library carries no test code.

    python tests/unit/fault_child.py WORLD_JSON OUT [phase1]
    python tests/unit/fault_child.py --serve   # a fork server: one run per JSON line on stdin

The fork server imports torch, transformers and probe once (7 s of the 2-core machine per start)
and forks a fresh child per run: each run is its own process in its own session, killed and
resumed like any other, but starts in a fraction of a second. Request: {"argv": [...], "env": {...},
"log": path}; answers {"pid": p} at once and {"rc": r} when the child ends (-9 when SIGKILLed).

Events, appended one line each to $FAULT_EVENTS (os.write on an O_APPEND fd: survives SIGKILL):
  B:<rel>  an atomic write of <rel> (relative to OUT) is complete in its temp file, not yet renamed
  A:<rel>  ... renamed into place
  O        an optimizer step has just changed the parameters in memory (nothing recorded yet)
  G        a batch of completions is about to be graded (sandbox workers running)
$FAULT_KILL = "<anchor>|<offset>|<mode>": at the `offset`-th event after the first event equal to
`anchor` (0: the anchor itself), mode `kill` SIGKILLs this process group, `mid` first cuts the
temp file to half (a write cut short, where the event is a B:), `enospc` raises
OSError(ENOSPC) there instead (where the event is a B:). The event that fired is logged as `K:...`.
$FAULT_HOLD = "<event>", $FAULT_RELEASE = path: pause at the first such event until the path exists.
$FAULT_PIDS: the sandbox zygotes' pids (own sessions, so not in the killed group) are appended
there, so the test can check they exit by themselves and reap any that does not.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# the tiny run: small enough for a unit test, every stage present
PHASE1_FLAGS = ["--device", "cpu", "--pool.steps", "3", "--pool.problems_per_step", "2",
                "--pool.group_size", "2", "--pool.base_reference_steps", "1",
                "--replay.lr", "0.01", "--replay.micro_batch", "3",
                "--replay.null_directions", "8",
                "--student_eval.split", "train", "--student_eval.n_problems", "1",
                "--student_eval.group_size", "2", "--grader.workers", "1",
                "--arms", "vanilla", "projected"]
GRPO_ARMS = ("vanilla", "projected_refresh")  # refresh: its re-extracted V is checkpointed too
GRPO_SEED = 5
GRPO_FLAGS = ["--grpo.steps", "3", "--grpo.problems_per_step", "2", "--grpo.group_size", "4",
              "--grpo.micro_batch", "3", "--grpo.seeds", str(GRPO_SEED),
              "--grpo.arms", *GRPO_ARMS, "--grpo.split", "train", "--grpo.refresh_every", "2",
              "--grpo.lr", "0.01", "--grpo.max_new_tokens", "6", "--grpo.tensorboard", "false"]


class Faults:
    """Counts events and fires the configured fault."""

    def __init__(self, out: Path) -> None:
        self.out = out.resolve()
        events = os.environ.get("FAULT_EVENTS")
        self.fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if events else None
        spec = os.environ.get("FAULT_KILL")
        self.anchor, offset, self.mode = spec.split("|") if spec else (None, "0", "kill")
        self.offset = int(offset)
        self.after: int | None = None  # events since the anchor
        self.hold = os.environ.get("FAULT_HOLD")
        self.release = os.environ.get("FAULT_RELEASE", "")

    def log(self, line: str) -> None:
        if self.fd is not None:
            os.write(self.fd, (line + "\n").encode())

    def event(self, name: str, tmp: str | None = None) -> None:
        self.log(name)
        if name == self.hold:  # pause (once) until the test says go: a run caught mid-stage
            self.hold = None
            while not os.path.exists(self.release):
                time.sleep(0.02)
        if self.anchor is None:
            return
        if self.after is None and name == self.anchor:
            self.after = 0
        elif self.after is not None:
            self.after += 1
        if self.after != self.offset:
            return
        self.anchor = None  # fires once
        self.log(f"K:{self.mode}:{name}")
        if self.mode == "enospc" and tmp is not None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
        if self.mode == "mid" and tmp is not None:
            with open(tmp, "r+b") as fh:
                fh.truncate(os.path.getsize(tmp) // 2)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def rel(self, path: Any) -> str | None:
        p = Path(path).resolve()
        return str(p.relative_to(self.out)) if p.is_relative_to(self.out) else None


def install(faults: Faults) -> None:
    import torch

    import probe.env.sandbox as sandbox
    from probe.env.grader import Grader

    real_replace = os.replace

    def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        rel = faults.rel(dst)
        if rel is not None:
            faults.event(f"B:{rel}", str(src))
        real_replace(src, dst, *a, **kw)
        if rel is not None:
            faults.event(f"A:{rel}")

    os.replace = replace  # probe.io commits every artifact with os.replace

    real_step = torch.optim.AdamW.step

    def step(self: torch.optim.Optimizer, *a: Any, **kw: Any) -> Any:
        res = real_step(self, *a, **kw)
        faults.event("O")
        return res

    torch.optim.AdamW.step = step

    real_grade = Grader.grade_many

    def grade_many(self: Grader, *a: Any, **kw: Any) -> Any:
        faults.event("G")
        return real_grade(self, *a, **kw)

    Grader.grade_many = grade_many

    pids = os.environ.get("FAULT_PIDS")
    real_start = sandbox.Sandbox._start

    def start(self: sandbox.Sandbox) -> None:
        real_start(self)
        if pids and self.proc is not None:
            with open(pids, "a") as fh:
                fh.write(f"{self.proc.pid}\n")

    sandbox.Sandbox._start = start


def fake_labels() -> None:
    """GRPO rewards from the stand-in label of tests/unit/tiny_world.py."""
    import probe.rl.rollout as rollout
    from tests.unit.tiny_world import stand_in_labels

    rollout.sample_and_grade = stand_in_labels(rollout.sample_and_grade)


def main(argv: list[str]) -> int:
    world, out = argv[0], Path(argv[1])
    phase1_only = argv[2:] == ["phase1"]
    from probe.cli import main as probe

    install(Faults(out))
    fake_labels()
    # the GRPO flags for `probe run` too: the run's config.json holds the whole resolved config
    # (last writer wins), so every command of the test resolves the same one
    common = ["--world", world, *PHASE1_FLAGS, *GRPO_FLAGS]
    rc = probe(["--out", str(out), "run", *common])
    if rc or phase1_only:
        return rc
    return probe(["--out", str(out), "grpo", *common])


def serve() -> int:
    import json

    import probe.checks  # noqa: F401  (everything a run imports, imported once, before any fork)
    import probe.cli  # noqa: F401
    import probe.stages.grpo  # noqa: F401
    import probe.stages.phase1  # noqa: F401
    import probe.world.real  # noqa: F401

    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the run: its own session, output to its log, nothing shared back
            rc = 70
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDONLY)
                log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.environ.update(req["env"])
                rc = main(req["argv"])
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
