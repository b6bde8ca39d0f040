"""Step files: atomic, validated on read, corrupt or partial ones named in the error."""
from __future__ import annotations

import gzip

import pytest

from probe.artifacts import (ArtifactError, config_hash, read_manifest, read_rows, valid_step,
                             write_manifest, write_rows)
from probe.stages.pool import PoolConfig

pytestmark = pytest.mark.unit


def test_roundtrip_and_validation(tmp_path):
    path = write_rows(tmp_path / "step_000.jsonl.gz", [{"a": 1, "b": float("nan")}, {"a": 2, "b": 0}])
    rows = read_rows(path, required=("a",), expected_rows=2)
    assert [r["a"] for r in rows] == [1, 2]
    with pytest.raises(ArtifactError, match="expected 3"):
        read_rows(path, expected_rows=3)
    with pytest.raises(ArtifactError, match="lacks field 'c'"):
        read_rows(path, required=("c",))
    assert not list(tmp_path.glob(".*.tmp")), "temp file left behind"


def test_truncated_and_garbage_files_are_errors(tmp_path):
    path = write_rows(tmp_path / "s.jsonl.gz", [{"x": i, "pad": "y" * 200} for i in range(200)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        read_rows(path)
    assert not valid_step(path)
    with gzip.open(path, "wt") as fh:
        fh.write('{"x": 1}\n{"x": \n')
    with pytest.raises(ArtifactError, match=":2: corrupt row"):
        read_rows(path)
    with pytest.raises(ArtifactError, match="missing"):
        read_rows(tmp_path / "nope.jsonl.gz")


def test_manifest_and_config_hash(tmp_path):
    with pytest.raises(ArtifactError, match="has not completed"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {"config": PoolConfig()})
    assert read_manifest(tmp_path)["config"]["group_size"] == 8
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(ArtifactError, match="corrupt"):
        read_manifest(tmp_path)
    assert config_hash(PoolConfig()) == config_hash(PoolConfig())
    assert config_hash(PoolConfig()) != config_hash(PoolConfig(steps=3))


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    """Artifacts are readable by whoever could read a plainly written file (not mkstemp's 0600)."""
    import os

    from probe.io import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert os.stat(atomic).st_mode == os.stat(plain).st_mode


def test_file_digest_is_content_not_path_or_mtime(tmp_path, monkeypatch) -> None:
    import os

    from probe import artifacts

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    data = bytes(range(256)) * 4096  # 1 MiB
    a.write_bytes(data)
    b.write_bytes(data)
    assert artifacts.file_digest(a) == artifacts.file_digest(b)
    os.utime(a, (1, 1))
    assert artifacts.file_digest(a) == artifacts.file_digest(b)  # touch/copy keeps the identity
    b.write_bytes(data[:-1] + b"\x00")
    assert artifacts.file_digest(a) != artifacts.file_digest(b)
    # large files: size + sampled blocks; a change in the first or last block, or of size, shows
    monkeypatch.setattr(artifacts, "FULL_DIGEST_BYTES", 1000)
    monkeypatch.setattr(artifacts, "BLOCK_BYTES", 100)
    big = bytearray(range(256)) * 200
    a.write_bytes(bytes(big))
    d0 = artifacts.file_digest(a)
    for pos in (0, len(big) - 1):
        changed = bytearray(big)
        changed[pos] ^= 1
        a.write_bytes(bytes(changed))
        assert artifacts.file_digest(a) != d0
    a.write_bytes(bytes(big) + b"x")
    assert artifacts.file_digest(a) != d0


def test_tree_digest_covers_every_file_but_hidden_ones(tmp_path) -> None:
    from probe.artifacts import tree_digest

    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"123")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "meta").write_text("timestamp")
    d = tree_digest(tmp_path)
    assert set(d) == {"config.json", "sub/w.safetensors"}
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"124")
    assert tree_digest(tmp_path) != d


def test_a_killed_writers_temporary_files_are_swept_and_a_live_ones_kept(tmp_path) -> None:
    """SIGKILL mid-write leaves `.<target>.<pid>@<host>.<random>.tmp`; the next run removes those
    whose writer is gone, never a live writer's, another host's or a stranger's file."""
    import os
    import signal
    import subprocess
    import sys

    from probe.io import _HOST, atomic_path, sweep_stale_tmp

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.send_signal(signal.SIGKILL)
    child.wait()
    deep = tmp_path / "run" / "arm"
    deep.mkdir(parents=True)
    dead = deep / f".step_001.jsonl.gz.{child.pid}@{_HOST}.abc123.tmp"
    live = deep / f".step_002.jsonl.gz.{os.getpid()}@{_HOST}.def456.tmp"
    other_host = deep / f".step_003.jsonl.gz.{child.pid}@elsewhere.ghi789.tmp"
    stranger = deep / ".notes.tmp"
    for p in (dead, live, other_host, stranger):
        p.write_text("partial")
    with atomic_path(deep / "step_004.jsonl.gz") as tmp:  # the writer's own name matches the rule
        assert tmp.name.startswith(f".step_004.jsonl.gz.{os.getpid()}@{_HOST}.")
        assert sweep_stale_tmp(tmp_path) == 1
        assert tmp.exists()
        tmp.write_text("done")
    assert not dead.exists()
    assert live.exists() and other_host.exists() and stranger.exists()
    assert (deep / "step_004.jsonl.gz").read_text() == "done"
