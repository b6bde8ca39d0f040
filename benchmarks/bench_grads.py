"""Batched per-sample δS gradients vs the per-sample loop, side by side in one run.

Prints wall time per batch, the speed ratio, and peak memory (CUDA: max allocated; CPU: peak RSS
of a fresh child process per measurement, so one method's high-water mark cannot hide another's).

    python benchmarks/bench_grads.py [--sizes 4 16 64] [--device cpu|cuda] [--hidden 128 --layers 4]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from probe.adapters.antipasto import AntipastoAdapter
from probe.batch import collate
from probe.grads import per_sample_grads, per_sample_grads_loop


def build(hidden: int, layers: int, device: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=hidden // 4, tie_word_embeddings=True, max_position_embeddings=512)
    model = Qwen3ForCausalLM(cfg).to(device).eval()
    return AntipastoAdapter(model)


def make_batch(b: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens_p = torch.randint(40, 80, (b,), generator=g).tolist()
    lens_c = torch.randint(20, 120, (b,), generator=g).tolist()
    prompts = [torch.randint(1, 512, (n,), generator=g).tolist() for n in lens_p]
    comps = [torch.randint(1, 512, (n,), generator=g).tolist() for n in lens_c]
    return collate(prompts, comps, pad_id=0, side="right").to(device)


def measure(method: str, b: int, args: dict) -> dict:
    torch.set_num_threads(args["threads"])
    adapter = build(args["hidden"], args["layers"], args["device"])
    batch = make_batch(b, args["device"])
    fn = per_sample_grads if method == "batched" else per_sample_grads_loop
    fn(adapter, batch.select(slice(0, 2)))  # warm-up
    if args["device"] == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args["repeats"]):
        t0 = time.perf_counter()
        fn(adapter, batch)
        if args["device"] == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if args["device"] == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": min(times), "peak_mb": peak_mb}


def _child(method: str, b: int, args: dict, q) -> None:
    q.put(measure(method, b, args))


def run_isolated(method: str, b: int, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(method, b, args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    a = vars(ap.parse_args())
    rows = []
    print(f"device={a['device']} hidden={a['hidden']} layers={a['layers']} torch={torch.__version__}")
    print(f"{'B':>4} {'batched s':>10} {'loop s':>9} {'speedup':>8} {'batched MB':>11} {'loop MB':>9}")
    for b in a["sizes"]:
        fast, slow = run_isolated("batched", b, a), run_isolated("loop", b, a)
        row = {"batch": b, "batched_s": fast["seconds"], "loop_s": slow["seconds"],
               "speedup": slow["seconds"] / fast["seconds"],
               "batched_peak_mb": fast["peak_mb"], "loop_peak_mb": slow["peak_mb"]}
        rows.append(row)
        print(f"{b:>4} {row['batched_s']:>10.3f} {row['loop_s']:>9.3f} {row['speedup']:>7.1f}x "
              f"{row['batched_peak_mb']:>11.0f} {row['loop_peak_mb']:>9.0f}")
    if a["json"]:
        with open(a["json"], "w") as fh:
            json.dump({"args": a, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
