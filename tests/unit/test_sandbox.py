"""The sandbox on its own: what a child process can and cannot see or do."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from probe.env.parse import decode_value
from probe.env.sandbox import SYSTEM_DIRS, ExecResult, Sandbox, SandboxConfig, _needed_paths

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(timeout_s=1.0, max_output_bytes=10_000), slot=7) as s:
        yield s


def value(sb: Sandbox, program: str, expr: str = "probe()") -> object:
    res = sb.run("", program, [{"kind": "value", "code": expr}], nonce="n")
    recs = [r for r in res.records if r.get("i") == 0]
    assert recs and "v" in recs[0], res
    return decode_value(recs[0]["v"])


def uid_processes(uid: int) -> list[int]:
    """Live (non-zombie) host processes running as `uid`."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            status = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines()
                          if ":" in line)
        except (OSError, ValueError):
            continue
        if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith("Z"):
            pids.append(int(d.name))
    return pids


def require_fs_isolation(sb: Sandbox) -> None:
    """Skip where the OS cannot give a mount namespace; fail where it could and hiding broke."""
    caps = sb.capabilities
    if caps.get("fs"):
        return
    if caps.get("root") and "ns_error" not in caps:
        pytest.fail(f"root with namespaces, but filesystem isolation failed: {caps.get('fs_error')}")
    pytest.skip("mount namespace unavailable (needs root): host files are readable")


def test_values_come_back_on_the_channel_not_stdout(sb: Sandbox) -> None:
    res = sb.run("", "print('{\"i\": 0, \"v\": 99}')\ndef probe():\n    return [1, (2, 3)]\n",
                 [{"kind": "value", "code": "probe()"}], nonce="n")
    assert [r for r in res.records if "i" in r] == [{"i": 0, "v": [1, {"tuple": [2, 3]}]}]
    assert '"v": 99' in res.output_tail


def test_environment_is_scrubbed_and_cwd_is_a_fresh_scratch_dir(sb: Sandbox) -> None:
    prog = ("import os\ndef probe():\n    fresh = os.path.exists('mark')\n"
            "    open('mark', 'w').write('x')\n"
            "    return [sorted(os.environ), os.getcwd(), sorted(os.listdir('.')), fresh]\n")
    env, cwd1, files, existed = value(sb, prog)
    assert existed is False
    assert env == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert files == ["mark", "output.txt"]
    _, cwd2, files2, existed2 = value(sb, prog)
    assert existed2 is False
    assert cwd2 != cwd1 and files2 == ["mark", "output.txt"]  # the first mark is gone


def test_statement_steps_report_the_nonce_and_stop_at_the_first_error(sb: Sandbox) -> None:
    res = sb.run("", "x = 1", [{"kind": "stmt", "code": "y = x"},
                               {"kind": "stmt", "code": "raise KeyError"},
                               {"kind": "stmt", "code": "z = 2"}], nonce="abc")
    steps = [r for r in res.records if "i" in r]
    assert steps == [{"i": 0, "ok": "abc"}, {"i": 1, "e": "KeyError"}]


def test_timeout_kills_the_whole_tree(sb: Sandbox) -> None:
    prog = ("import subprocess, time\n"
            "pids = [subprocess.Popen(['sleep', '30']).pid,\n"
            "        subprocess.Popen(['sleep', '30'], start_new_session=True).pid]\n"
            "print(pids, flush=True)\ntime.sleep(30)\n")
    t0 = time.monotonic()
    res = sb.run("", prog, [], nonce="n")
    assert res.timed_out and time.monotonic() - t0 < 3
    if sb.capabilities.get("pid"):  # the printed pids are the namespace's: look for the uid
        time.sleep(0.2)
        assert uid_processes(sb.capabilities["uid_value"]) == []
        return
    pids = [int(x) for x in res.output_tail.strip().strip("[]").split(",")]
    time.sleep(0.2)
    alive = [p for p in pids if Path(f"/proc/{p}").exists()
             and "Z" not in (Path(f"/proc/{p}/stat").read_text().split()[2:3] or ["Z"])]
    assert pids[0] not in alive  # in the killed process group: dead with or without uid isolation
    if not sb.capabilities.get("uid"):
        pytest.skip("without a per-worker uid, setsid() escapees are not tracked")
    assert alive == []


def test_output_is_capped(sb: Sandbox) -> None:
    res = sb.run("", "import sys\nsys.stdout.write('y' * 5_000_000)\n", [], nonce="n")
    assert any(r.get("e") == "OSError" for r in res.records)  # EFBIG at the cap
    assert len(res.output_tail) <= 2000


def test_memory_limit(sb: Sandbox) -> None:
    res = sb.run("", "x = bytearray(2 * 1024 ** 3)", [], nonce="n")
    assert {"k": "exec", "e": "MemoryError"} in res.records


def test_no_network(sb: Sandbox) -> None:
    if not sb.capabilities.get("net"):
        pytest.skip("network namespace unavailable (needs root / unshare)")
    prog = ("import socket\ndef probe():\n    out = []\n"
            "    for addr in [('1.1.1.1', 53), ('127.0.0.1', 22)]:\n        try:\n"
            "            socket.create_connection(addr, timeout=0.3)\n            out.append('ok')\n"
            "        except OSError as e:\n            out.append(type(e).__name__)\n    return out\n")
    assert "ok" not in value(sb, prog)


def test_host_directories_are_hidden(sb: Sandbox) -> None:
    require_fs_isolation(sb)
    prog = ("import os\ndef probe():\n"
            f"    return [os.path.exists(p) for p in {[str(REPO / 'README.md')]!r}]"
            "\n")
    assert value(sb, prog) == [False]
    assert value(sb, "import os\ndef probe():\n    return os.listdir('/tmp')\n") != []  # own dir


def test_only_system_directories_and_the_python_install_are_visible(sb: Sandbox) -> None:
    """Allowlist, not denylist: wherever the checkout or data live (CI uses /check/...), every
    top-level directory outside SYSTEM_DIRS is an empty tmpfs except for the path down to Python,
    and every regular file at / reads as empty."""
    require_fs_isolation(sb)
    prog = ("import os\ndef ls(d):\n    try:\n        return sorted(os.listdir(d))\n"
            "    except PermissionError:\n        return []\n"  # unreadable to the child: fine
            "def size(f):\n    try:\n        return len(open(f, 'rb').read(64))\n"
            "    except OSError:\n        return 0\n"
            "def probe():\n    tops = [n for n in os.listdir('/') if n not in "
            f"{sorted(SYSTEM_DIRS)!r} and n != 'tmp' and not os.path.islink('/' + n)]\n"
            "    return ([[n, ls('/' + n)] for n in tops if os.path.isdir('/' + n)],\n"
            "            [[n, size('/' + n)] for n in tops if os.path.isfile('/' + n)])\n")
    below: dict[str, set[str]] = {}  # top-level dir -> the entries leading to a kept path
    for k in _needed_paths():
        parts = Path(k).parts
        if len(parts) > 2:
            below.setdefault(parts[1], set()).add(parts[2])
    dirs, files = value(sb, prog)
    assert dirs, "no top-level directory to check"
    for top, entries in dirs:
        assert set(entries) <= below.get(top, set()), (top, entries)
    for name, n_bytes in files:
        assert n_bytes == 0, f"/{name} is readable from the sandbox"


def test_runs_as_an_unprivileged_uid(sb: Sandbox) -> None:
    if not sb.capabilities.get("uid"):
        pytest.skip("not root: cannot drop to a per-worker uid")
    uid, ppid_kill = value(sb, "import os, signal\ndef probe():\n    try:\n"
                               "        os.kill(os.getppid(), signal.SIGKILL)\n        r = 'killed'\n"
                               "    except OSError as e:\n        r = type(e).__name__\n"
                               "    return [os.getuid(), r]\n")
    assert uid == sb.capabilities["uid_value"] >= 61000 and ppid_kill == "PermissionError"


def test_a_dead_zygote_is_replaced(sb: Sandbox) -> None:
    assert sb.proc is not None
    os.killpg(sb.proc.pid, 9)
    sb.proc.wait()
    res: ExecResult = sb.run("", "x = 1", [{"kind": "value", "code": "x"}], nonce="n")
    assert {"i": 0, "v": 1} in res.records


def test_pid_namespace_hides_host_processes(sb: Sandbox) -> None:
    """Graded code sees only its own processes in /proc and cannot signal anything outside."""
    caps = sb.capabilities
    if not caps.get("pid"):
        if caps.get("root") and caps.get("mount_ns") and "pid_error" not in caps:
            pytest.fail("root with a mount namespace, but no PID namespace and no reason given")
        pytest.skip(f"no PID namespace: {caps.get('pid_error', 'needs root and namespaces')}")
    host_pid = os.getpid()  # this test process: exists on the host, not in the namespace
    prog = ("import os, signal\ndef probe():\n"
            "    seen = sorted(int(d) for d in os.listdir('/proc') if d.isdigit())\n"
            "    out = []\n"
            f"    for pid in (1, {host_pid}):\n"
            "        try:\n            os.kill(pid, 0)\n            out.append('visible')\n"
            "        except OSError as e:\n            out.append(type(e).__name__)\n"
            "    return [seen, os.getpid(), out]\n")
    seen, own, signals = value(sb, prog)
    assert seen == [own]  # not the zygote (pid 1, another uid), not the host, not siblings
    assert signals[0] == "PermissionError"  # the zygote: another uid
    if host_pid != own:
        assert signals[1] in ("ProcessLookupError", "PermissionError")


def test_memory_limit_covers_the_whole_process_tree() -> None:
    """8 forked processes of 48 MB each stay under the 128 MB per-process limit but not under the
    tree limit: with a memory cgroup the kernel kills them and the job is reported OOM-killed."""
    with Sandbox(SandboxConfig(timeout_s=2.0, memory_mb=128), slot=8) as small:
        if not small.capabilities.get("memory", "").startswith("cgroup"):
            pytest.skip(f"no memory cgroup: {small.capabilities.get('memory_error')} "
                        "(memory is bounded per process only)")
        prog = ("import os, time\nkids = []\nfor _ in range(8):\n    pid = os.fork()\n"
                "    if pid == 0:\n        b = bytearray(48 * 1024 * 1024)\n"
                "        b[::4096] = b'x' * len(b[::4096])\n        time.sleep(3)\n"
                "        os._exit(0)\n    kids.append(pid)\n"
                "for pid in kids:\n    os.waitpid(pid, 0)\n")
        res = small.run("", prog, [{"kind": "value", "code": "1"}], nonce="n")
        assert res.oom_killed, res
        res = small.run("", "x = bytearray(32 * 1024 * 1024)", [{"kind": "value", "code": "1"}],
                        nonce="n")
        assert {"i": 0, "v": 1} in res.records  # the worker recovered, the cgroup drained


def test_scratch_disk_is_bounded_and_emptied_after_each_job() -> None:
    """Filling the scratch dir with bytes or with empty files ends in ENOSPC, and the next job
    starts on an empty scratch filesystem (the private /tmp tmpfs, 256 MB / 65536 inodes)."""
    with Sandbox(SandboxConfig(timeout_s=10.0), slot=9) as big:
        require_fs_isolation(big)
        prog = ("import errno, os\ndef fill(kind):\n    n = 0\n    try:\n"
                "        while n < 300_000:\n            with open('%s%d' % (kind, n), 'wb') as fh:\n"
                "                fh.write(b'x' * 999_000 if kind == 'big' else b'')\n"
                "            n += 1\n    except OSError as e:\n"
                "        return [n, errno.errorcode[e.errno]]\n    return [n, None]\n"
                "def free():\n    st = os.statvfs('.')\n    return [st.f_bfree, st.f_ffree]\n")
        steps = [{"kind": "value", "code": c} for c in ("free()", "fill('big')", "fill('empty')")]
        res = big.run("", prog, steps, nonce="n")
        got = {r["i"]: decode_value(r["v"]) for r in res.records if "v" in r}
        assert got[1][1] == "ENOSPC" and 200 < got[1][0] < 300, got  # ~256 x 1 MB files
        assert got[2][1] == "ENOSPC" and got[2][0] < 70_000, got  # the inode limit
        after = value(big, prog, "free()")
        assert after == got[0]  # everything the last job wrote is gone
