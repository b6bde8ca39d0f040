"""Data-parallel scaling of the replay step and the GRPO step over 1, 2, 4, 8 ranks (issue #15).

Each rank count R runs in its own `torch.multiprocessing` spawn: R ranks (NCCL, one GPU each, or
gloo on CPU) build the same model (random weights with a planted SVD, as bench_real_shape.py), and
time, at one fixed global batch (strong scaling), `probe.train_step.train_step` with the NLL (the
replay step: per-sample gradients, cosines, projection, clip, AdamW; `distributed=True`) and
`probe.rl.trainer.grpo_update_step` (the Dr.GRPO surrogate, 2 updates, projected arm). Each rank
computes its share of the rows; the gradient sum is all-reduced before projection. Prints steps/s
per R, the speed-up over R = 1 and the scaling efficiency (speed-up / R).

    python benchmarks/bench_multi_gpu.py                      # every power of 2 up to the GPUs
    python benchmarks/bench_multi_gpu.py --ranks 1 2 4 8 --batch 64 --seq 1024
    python benchmarks/bench_multi_gpu.py --tiny               # CPU smoke: gloo, tiny shape, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_shape import QWEN3_4B, TINY, build_model, make_batch, plant_svd  # noqa: E402

SECTIONS = ("replay step", "GRPO step")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dist.barrier()


def _timed(fn: Any, device: str, steps: int, warmup: int) -> float:
    """Seconds per call, every rank in step (the slowest rank's time is the step's)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _rows(a: argparse.Namespace, vocab: int, device: str) -> list[dict[str, Any]]:
    """The global batch, identical on every rank: GRPO groups of `a.group` rows, half teacher."""
    prompts, comps, _ = make_batch(a.batch, a.seq, vocab, device)
    rows = []
    for i, (p, c) in enumerate(zip(prompts, comps)):
        rows.append({"prompt_ids": p, "completion_ids": c, "index": i, "group": i // a.group,
                     "source": "teacher" if i % a.group < a.group // 2 else "student",
                     "reward": 3.5 if i % 3 == 0 else 0.5,
                     "old_logp": [-2.0] * len(c), "behaviour_logp": [-2.1] * len(c)})
    return rows


def _worker(rank: int, size: int, a: argparse.Namespace, init: str, out: str) -> None:
    from probe.adapters.antipasto import AntipastoAdapter
    from probe.arms import get_arm
    from probe.rl.config import GRPOConfig
    from probe.rl.trainer import grpo_update_step
    from probe.train_step import Projection, train_step
    from probe.vhack import random_directions

    cuda = a.device == "cuda"
    device = f"cuda:{rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init, rank=rank,
                            world_size=size)
    try:
        shape = TINY if a.tiny else QWEN3_4B
        model = build_model(shape, a.layers or shape["num_hidden_layers"], device, torch.bfloat16)
        plant_svd(model)
        adapter = AntipastoAdapter(model)
        V = {k: {n: t.to(device) for n, t in random_directions(adapter.sizes, 1, i).items()}
             for i, k in enumerate(("nll", "random", "shuffled"))}
        rows = _rows(a, shape["vocab_size"], device)
        opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
        proj = Projection(V["nll"])
        cfg = GRPOConfig(micro_batch=a.micro_batch, updates_per_batch=2)
        arm = get_arm("grpo", "projected")
        norm = float(a.batch * a.seq)
        steps = {
            "replay step": lambda: train_step(
                adapter, opt, rows, pad=0, device=device, micro_batch=a.micro_batch,
                v_hack=V["nll"], reduce="mean", directions=V, projection=proj,
                max_grad_norm=1.0, distributed=True),
            "GRPO step": lambda: grpo_update_step(adapter, opt, rows, V, arm, cfg, 0, device,
                                                  norm)}
        res = {name: _timed(fn, device, a.steps, a.warmup) for name, fn in steps.items()}
        if rank == 0:
            Path(out).write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def measure(a: argparse.Namespace, size: int) -> dict[str, float]:
    """Seconds per step of each section on `size` ranks (one spawn)."""
    with tempfile.TemporaryDirectory(prefix="bench_multi_gpu_") as tmp:
        out = Path(tmp) / "res.json"
        mp.spawn(_worker, args=(size, a, f"file://{Path(tmp) / 'init'}", str(out)), nprocs=size,
                 join=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke: tiny shape, seconds")
    ap.add_argument("--ranks", type=int, nargs="*", default=None,
                    help="rank counts (default: 1, 2, 4, 8 up to the GPUs; on CPU 1 2)")
    ap.add_argument("--layers", type=int, default=None, help="default: the shape's (36 at 4B)")
    ap.add_argument("--batch", type=int, default=64, help="global rows per step (fixed over R)")
    ap.add_argument("--group", type=int, default=16, help="GRPO group size G")
    ap.add_argument("--seq", type=int, default=1024, help="prompt + completion tokens")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per section")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", help="also write the numbers to this file")
    a = ap.parse_args(argv)
    if a.tiny:
        a.batch, a.group, a.seq, a.micro_batch, a.steps = 8, 4, 32, 2, 2
    n_gpu = torch.cuda.device_count() if a.device == "cuda" else 0
    if a.ranks is None:
        a.ranks = [r for r in (1, 2, 4, 8) if r <= n_gpu] if n_gpu else [1, 2]
    if n_gpu and max(a.ranks) > n_gpu:
        raise SystemExit(f"--ranks {max(a.ranks)} needs {max(a.ranks)} GPUs; {n_gpu} present")
    res: dict[str, Any] = {"args": vars(a).copy(), "torch": torch.__version__,
                           "device": torch.cuda.get_device_name() if n_gpu else "cpu (gloo)",
                           "seconds": {}}
    for r in a.ranks:
        res["seconds"][r] = measure(a, r)
    report(a, res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return res


def report(a: argparse.Namespace, res: dict[str, Any]) -> None:
    sec = res["seconds"]
    base = sec.get(1)
    print(f"\n== bench_multi_gpu: {res['device']}, torch {res['torch']}, "
          f"{'tiny' if a.tiny else 'Qwen3-4B'} shape, {a.layers or 'all'} layers, global batch "
          f"{a.batch} x {a.seq} tokens, micro-batch {a.micro_batch} ==")
    print(f"{'section':<14}{'ranks':>6}{'s/step':>10}{'steps/s':>10}{'speed-up':>10}"
          f"{'efficiency':>12}")
    for name in SECTIONS:
        for r, s in sec.items():
            t = s[name]
            up = base[name] / t if base else float("nan")
            res.setdefault("efficiency", {}).setdefault(name, {})[r] = up / r
            print(f"{name:<14}{r:>6}{t:>10.4g}{1 / t:>10.4g}{up:>10.3g}{up / r:>12.1%}")


if __name__ == "__main__":
    main()
