"""Where the real 40-problem benchmark sample lives when a machine has it (never in the repo)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `../shared/data/` beside the checkout; PROBE_SAMPLE overrides. Tests skip when it is absent.
REAL_SAMPLE = Path(os.environ.get(
    "PROBE_SAMPLE", REPO.parent / "shared" / "data" / "leetcode_test_medhard_sample40.jsonl"))
