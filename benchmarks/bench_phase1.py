"""Phase 1 throughput on a world, side by side in one run:

- generation tokens/s: batched sampling with a KV cache (batch 64) vs one prompt at a time;
- replay samples/s: batched per-sample δS gradients vs the per-sample backward loop.

    python benchmarks/bench_phase1.py [--world embedded] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import time

import torch

from probe.adapters.antipasto import AntipastoAdapter
from probe.batch import collate
from probe.encoding import encode_completion, encode_prompt, pad_id
from probe.generate import generate
from probe.grads import per_sample_grads, per_sample_grads_loop
from probe.world.select import get_world


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_generation(world, model, device: str, n_batched: int, n_single: int) -> dict:
    probs = world.problems("train")
    prompts = [world.render(probs[i % len(probs)], "simple_overwrite_tests") for i in range(n_batched)]
    kw = dict(temperature=world.sampling.temperature, top_p=world.sampling.top_p,
              max_new_tokens=world.sampling.max_new_tokens, seed=0)
    out = {}
    for name, ps, bs in (("batched", prompts, n_batched), ("one-at-a-time", prompts[:n_single], 1)):
        sync(device)
        t0 = time.perf_counter()
        samples = generate(model, world.tokenizer, ps, batch_size=bs, **kw)
        sync(device)
        dt = time.perf_counter() - t0
        toks = sum(len(s.completion_ids) for s in samples)
        out[name] = {"tokens": toks, "seconds": dt, "tokens_per_s": toks / dt}
    return out


def bench_replay(world, model, device: str, n: int) -> dict:
    tok = world.tokenizer
    pairs = world.contrastive_pairs("train")[:n]
    batch = collate([encode_prompt(tok, p.prompt) for p in pairs],
                    [encode_completion(tok, p.hack) for p in pairs], pad_id(tok)).to(device)
    adapter = AntipastoAdapter(model)
    out = {}
    for name, fn in (("batched", per_sample_grads), ("loop", per_sample_grads_loop)):
        fn(adapter, batch.select(slice(0, 2)))
        sync(device)
        t0 = time.perf_counter()
        fn(adapter, batch)
        sync(device)
        dt = time.perf_counter() - t0
        out[name] = {"samples": batch.size, "seconds": dt, "samples_per_s": batch.size / dt}
    adapter.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="embedded")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--n-single", type=int, default=8)
    ap.add_argument("--n-replay", type=int, default=32)
    a = ap.parse_args()
    world = get_world(a.world)
    model = world.load_base(a.device)
    print(f"world={world.name} device={a.device} torch={torch.__version__}")
    g = bench_generation(world, model, a.device, a.n_gen, a.n_single)
    ratio = g["batched"]["tokens_per_s"] / g["one-at-a-time"]["tokens_per_s"]
    print(f"generation tokens/s: batched(B={a.n_gen}) {g['batched']['tokens_per_s']:.0f}  "
          f"one-at-a-time {g['one-at-a-time']['tokens_per_s']:.0f}  ratio {ratio:.1f}x")
    r = bench_replay(world, model, a.device, a.n_replay)
    ratio = r["batched"]["samples_per_s"] / r["loop"]["samples_per_s"]
    print(f"replay samples/s (per-sample δS grads, n={r['batched']['samples']}): "
          f"batched {r['batched']['samples_per_s']:.1f}  loop {r['loop']['samples_per_s']:.1f}  "
          f"ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
