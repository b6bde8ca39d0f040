"""Data parallel GRPO step: 2 gloo ranks on CPU give the single process's gradients, cosines,
ratio statistics and parameters (issue: the same code runs with NCCL on several GPUs)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from probe.adapters.antipasto import AntipastoAdapter
from probe.arms import get_arm
from probe.rl.config import GRPOConfig
from probe.rl.trainer import grpo_update_step
from probe.vhack import random_directions
from tests.unit.conftest import make_tiny_qwen3
from tests.unit.test_dr_grpo import _rows

pytestmark = pytest.mark.unit
CFG = GRPOConfig(micro_batch=3, updates_per_batch=2)


def _step(out: Path | None) -> dict:
    torch.manual_seed(0)
    adapter = AntipastoAdapter(make_tiny_qwen3(seed=0))
    sizes = adapter.sizes
    V = {"nll": random_directions(sizes, 1, 0), "random": random_directions(sizes, 1, 1)}
    rows = _rows(7, seed=4)
    for i, r in enumerate(rows):
        r.update(group=i // 4, reward=[3.5, 0.5, 0.5, 3.0, 0.5, 3.5, 0.5][i], index=i,
                 old_logp=r["old_logp"])
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    records, summary = grpo_update_step(adapter, opt, rows, V, get_arm("grpo", "projected"), CFG, 0, "cpu",
                                        40.0)
    res = {"records": records, "summary": summary,
           "params": adapter.flat_values()}
    if out is not None:
        out.write_bytes(pickle.dumps(res))
    return res


def _worker(rank: int, size: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        _step(Path(out) if rank == 0 else None)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    single = _step(None)
    out = tmp_path / "rank0.pkl"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", str(out)), nprocs=2, join=True)
    multi = pickle.loads(out.read_bytes())
    assert [r["index"] for r in multi["records"]] == list(range(7))  # every row, in row order
    for a, b in zip(single["records"], multi["records"]):
        assert a["cos_S_contrib"] == pytest.approx(b["cos_S_contrib"], rel=1e-4, abs=1e-6,
                                                   nan_ok=True)
    for n in single["params"]:  # two projected AdamW steps later, the same parameters
        torch.testing.assert_close(multi["params"][n], single["params"][n], rtol=1e-4, atol=1e-6)
    for us, um in zip(single["summary"]["updates"], multi["summary"]["updates"]):
        assert um["grad_norm_in"] == pytest.approx(us["grad_norm_in"], rel=1e-5)
        assert um["cos_in"] == pytest.approx(us["cos_in"], rel=1e-4, abs=1e-7)
        for key, s in us["ratio"].items():  # ratio statistics merged across ranks
            assert um["ratio"][key].get("n") == s.get("n"), key
            if s.get("n"):
                assert um["ratio"][key]["hist"] == s["hist"], key
                assert um["ratio"][key]["mean"] == pytest.approx(s["mean"], rel=1e-5), key
    assert single["summary"]["updates"][1]["grad_norm_in"] > 0
