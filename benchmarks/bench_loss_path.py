"""The loss on target positions only (flat rows) vs full logits, side by side in one run, inside
`per_sample_grads` at a Qwen3-4B-like shape (random weights, nothing downloaded).

Prints, per path: seconds per batched per-sample-gradient call, peak memory, and the largest
difference of the per-sample losses and gradients between the two paths.

    python benchmarks/bench_loss_path.py [--device cuda] [--layers 8] [--batch 8] [--seq 1024]
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

import probe.grads as grads
from probe.adapters.antipasto import AntipastoAdapter
from probe.batch import collate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=8, help="Qwen3-4B has 36; the loss cost does "
                                                          "not depend on depth")
    ap.add_argument("--hidden", type=int, default=2560)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024, help="prompt + completion tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                    help="default: bfloat16 on CUDA, float32 on CPU")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype) if a.dtype else \
        (torch.bfloat16 if a.device == "cuda" else torch.float32)
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=3 * a.hidden + 1984,
                      num_hidden_layers=a.layers, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, tie_word_embeddings=True, max_position_embeddings=4096)
    model = Qwen3ForCausalLM(cfg).to(a.device, dtype).eval()
    t0 = time.perf_counter()
    adapter = AntipastoAdapter(model)
    t_svd = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    half = a.seq // 2
    prompts = [torch.randint(10, a.vocab, (half,), generator=g).tolist() for _ in range(a.batch)]
    comps = [torch.randint(10, a.vocab, (a.seq - half,), generator=g).tolist()
             for _ in range(a.batch)]
    batch = collate(prompts, comps, 0).to(a.device)
    results = {}
    for name, fn in (("full logits", grads.token_nll_full), ("flat rows", grads.token_nll_flat)):
        orig = grads.token_nll
        grads.token_nll = fn
        try:
            out = grads.per_sample_grads(adapter, batch)  # warm-up
            if a.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            best = float("inf")
            for _ in range(a.repeats):
                t = time.perf_counter()
                out = grads.per_sample_grads(adapter, batch)
                if a.device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
            peak = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else float("nan")
        finally:
            grads.token_nll = orig
        results[name] = (best, peak, out)
    print(f"model: {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}, {dtype}, {a.device}; "
          f"batch {a.batch} x {a.seq} tokens (half completion); adapter SVD {t_svd:.1f} s")
    for name, (best, peak, _) in results.items():
        print(f"{name:>12}: {best:.3f} s per per_sample_grads call, peak {peak:.1f} GiB")
    full, flat = results["full logits"][2], results["flat rows"][2]
    dl = (full.loss - flat.loss).abs().max().item()
    rels = {n: ((full.grads[n] - flat.grads[n]).norm() / full.grads[n].norm().clamp(min=1e-30)).item()
            for n in full.grads}
    worst = max(rels, key=rels.get)
    cos = torch.nn.functional.cosine_similarity(
        torch.cat([g.flatten(1) for g in full.grads.values()], 1).double(),
        torch.cat([g.flatten(1) for g in flat.grads.values()], 1).double(), dim=1)
    print(f"speedup {results['full logits'][0] / results['flat rows'][0]:.2f}x; max |Δloss| "
          f"{dl:.3g}; per-sample gradient cosine between the paths: min {cos.min().item():.5f}; "
          f"worst module {worst}: relative difference {rels[worst]:.3g} (norms "
          f"{full.grads[worst].norm().item():.3g} vs {flat.grads[worst].norm().item():.3g}); "
          f"median module {sorted(rels.values())[len(rels) // 2]:.3g}")


if __name__ == "__main__":
    main()
