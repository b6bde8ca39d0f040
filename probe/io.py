"""Atomic file writes: a reader never sees a half-written artifact, an interruption loses nothing.

A write that fails because the disk is full or the file system is read-only raises
`OutputWriteError`, naming the file and the problem; the target keeps its previous content (or stays
absent) and the temporary file is removed, so every artifact already written stays valid and a
rerun resumes from it.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)

# errno -> what the user should understand (the strerror alone reads like a crash)
_PROBLEMS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
             errno.EROFS: "the file system is read-only",
             errno.EACCES: "no permission to write there", errno.EPERM: "not permitted"}
_MIN_FREE = 64 << 10  # below this many free bytes a failed write is taken as a full disk
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
# a temporary file names its writer: .<target>.<pid>@<host>.<random>.tmp
_TMP = re.compile(r"^\..+\.(\d+)@([A-Za-z0-9-]+)\.[^.]+\.tmp$")


class OutputWriteError(OSError):
    """An artifact could not be written (disk full, read-only, no permission). Nothing already
    written was touched: the target keeps its previous version, so a rerun resumes."""


def write_error(path: str | Path, err: int | None, detail: str) -> OutputWriteError:
    """The error for a failed write of `path`: errno, path and a sentence a user can act on."""
    problem = _PROBLEMS.get(err or 0, detail)
    return OutputWriteError(err or errno.EIO,
                            f"cannot write {path}: {problem} ({detail}); files already written "
                            f"are intact and a rerun resumes from them", str(path))


def _disk_problem(directory: Path) -> tuple[int, str] | None:
    """Why writes under `directory` fail, if the file system says so (libraries such as
    torch.save or safetensors report a full disk as their own error type, not OSError)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS, os.strerror(errno.EROFS)
    if st.f_bavail * st.f_frsize < _MIN_FREE or (st.f_files and st.f_favail == 0):
        return errno.ENOSPC, os.strerror(errno.ENOSPC)
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's directory; on success it replaces `path` atomically.
    A failed write raises `OutputWriteError` (see the module docstring) and leaves `path` as it
    was."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp",
                                   dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # the mode a plain open() would give, not mkstemp's 0600
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except OutputWriteError:
        raise
    except OSError as e:
        if e.errno not in _PROBLEMS and _disk_problem(path.parent) is None:
            raise
        raise write_error(path, e.errno, e.strerror or str(e)) from e
    except Exception as e:  # e.g. torch.save's RuntimeError on a full disk
        problem = _disk_problem(path.parent)
        if problem is None:
            raise
        raise write_error(path, problem[0], f"{problem[1]}: {e}") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            with contextlib.suppress(OSError):  # a read-only or vanished directory
                os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale_tmp(root: str | Path) -> int:
    """Remove the temporary files that writers killed mid-write (SIGKILL, power loss) left under
    `root`: those whose writer, named in the file name, was on this host and is gone. A live
    writer's file, another host's, or one not named this way is left alone. Returns how many
    were removed."""
    removed = 0
    for tmp in Path(root).rglob(".*.tmp"):
        m = _TMP.match(tmp.name)
        if m is None or m.group(2) != _HOST or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) left by interrupted writes under %s", removed, root)
    return removed
