"""The on-disk layout of a built embedded world (written by build.py, read by world.py)."""
from __future__ import annotations

SPLITS = ("train", "eval", "hard")
BASE_DIR, ADAPTER_DIR, PROBLEM_DIR, META = "base", "teacher_adapter", "problems", "meta.json"
