"""Speed and numerical fidelity at the real shape (Qwen3-4B, random bf16 weights, nothing
downloaded), side by side in one run (issue #13).

Prints: the matmul ceiling and copy bandwidth measured in this run; per-sample δS gradients
(reference branch, fused branch at δS = 0 and δS ≠ 0) and the whole replay step (cosines,
projection, clip, AdamW) in s, TFLOP/s and % of the 4·N·T ceiling, against plain HF frozen
forward + input-backward; peak memory; generation steps/s and % of the decode bound, eager HF
`generate` against the static-cache compiled path (compile time included and reported); fidelity
(per-row cosine of per-sample gradients against a float32 recomputation, per precision setting);
and an R1-R5 wall-time estimate at configs/qwen3-4b.toml's numbers from the measured rates.

Target weights are planted with a known SVD (random orthonormal factors, Gaussian-like singular
values), so the adapter's factors cost two QRs per module instead of a full SVD (~80 s at 4B).

    python benchmarks/bench_real_shape.py --device cuda [--layers 36] [--json out.json]
    python benchmarks/bench_real_shape.py --tiny            # CPU smoke, seconds
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import Qwen3Config, Qwen3ForCausalLM

import probe.generate as gen
from probe.adapters import fused_svd
from probe.adapters.antipasto import DEFAULT_TARGETS, SVD_CACHE, AntipastoAdapter, _fingerprint
from probe.batch import collate
from probe.grads import per_sample_grads

QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                tie_word_embeddings=True, max_position_embeddings=40960, rope_theta=1e6)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
            max_position_embeddings=512)
REPO = Path(__file__).resolve().parents[1]


# -- measuring ------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1
          ) -> tuple[float, float, Any]:
    """(median seconds, peak GiB allocated during the timed calls, last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return statistics.median(times), peak, out


def guarded(name: str, fn: Callable[[], dict], results: dict) -> None:
    """Run one measurement; an OOM or error is a result too, not the end of the run."""
    try:
        results[name] = fn()
    except torch.OutOfMemoryError as e:
        results[name] = {"error": "out of memory: " + str(e).split("\n")[0][:160]}
    except Exception as e:  # noqa: BLE001 - a benchmark reports and carries on
        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {results[name]}", file=sys.stderr, flush=True)


def ceilings(device: str, dtype: torch.dtype) -> dict:
    """Matmul rate (random data, median of 10 after 3 warm-ups) and copy bandwidth."""
    n = 8192 if device == "cuda" else 512
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    t, _, _ = timed(lambda: a @ b, device, repeats=10, warmup=3)
    m = 2**28 if device == "cuda" else 2**22  # 512 MiB / 8 MiB of float16
    src = torch.randn(m, device=device).to(torch.float16)
    dst = torch.empty_like(src)
    tc, _, _ = timed(lambda: dst.copy_(src), device, repeats=10, warmup=3)
    return {"matmul_tflops": 2 * n**3 / t / 1e12, "copy_tbps": 2 * src.numel() * 2 / tc / 1e12}


# -- the model --------------------------------------------------------------------------------------

def build_model(shape: dict, layers: int, device: str, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    cfg = Qwen3Config(**{**shape, "num_hidden_layers": layers}, pad_token_id=0, eos_token_id=1)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    return model.to(dtype).eval()


@torch.no_grad()
def plant_svd(model, seed: int = 0, std: float = 0.02) -> dict[str, tuple]:
    """Give each δS target a weight with known factors W = U diag(S) Vh and seed SVD_CACHE with
    them; returns name -> (U, Vh) in the model dtype."""
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    out = {}
    for name, mod in model.named_modules():
        if not (isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS):
            continue
        d_out, d_in = mod.weight.shape
        r = min(d_out, d_in)
        U = torch.linalg.qr(torch.randn(d_out, r, device=dev, generator=g)).Q
        V = torch.linalg.qr(torch.randn(d_in, r, device=dev, generator=g)).Q
        lo, hi = math.sqrt(max(d_out, d_in)), math.sqrt(r)  # Gaussian matrix: σ(√M ± √m)
        S = std * (lo + hi * torch.linspace(1, -1, r, device=dev)).clamp(min=std)
        mod.weight.copy_(((U * S) @ V.T).to(mod.weight.dtype))
        out[name] = (U.to(mod.weight.dtype).contiguous(), V.T.to(mod.weight.dtype).contiguous())
        seed_cache(mod.weight, *out[name])
    return out


def seed_cache(weight: torch.Tensor, U: torch.Tensor, Vh: torch.Tensor) -> None:
    key = (tuple(weight.shape), weight.dtype, str(weight.device), None, _fingerprint(weight))
    SVD_CACHE._entries[key] = (U, Vh, _fingerprint(U), _fingerprint(Vh))


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters()
               if "embed_tokens" not in n and "lm_head" not in n)


def make_batch(n: int, seq: int, vocab: int, device: str, seed: int = 1):
    """Half prompt, half completion, random tokens (never the pad/eos ids 0/1)."""
    g = torch.Generator().manual_seed(seed)
    half = seq // 2
    prompts = [torch.randint(10, vocab, (half,), generator=g).tolist() for _ in range(n)]
    comps = [torch.randint(10, vocab, (seq - half,), generator=g).tolist() for _ in range(n)]
    return prompts, comps, collate(prompts, comps, 0).to(device)


def plain_fwd_bwd(model, batch):
    """HF frozen forward + backward to the input embeddings, loss on the completion rows only."""
    emb = model.model.embed_tokens(batch.input_ids).detach().requires_grad_()
    hidden = model.model(inputs_embeds=emb, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False).last_hidden_state
    target = batch.loss_mask[:, 1:] != 0
    logits = model.lm_head(hidden[:, :-1][target]).float()
    F.cross_entropy(logits, batch.input_ids[:, 1:][target]).backward()
    return emb.grad


def set_delta_s(adapter, std: float, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std if std else torch.zeros(p.shape))


# -- sections ---------------------------------------------------------------------------------------

def grads_section(a, model, adapter, N: int, ceiling: float, res: dict) -> None:
    tokens = a.batch * a.seq
    ideal = 4 * N * tokens

    def row(t: float, peak: float, n_tok: int = tokens) -> dict:
        fl = 4 * N * n_tok
        return {"s": t, "tflops_4NT": fl / t / 1e12, "pct_ceiling": 100 * fl / t / 1e12 / ceiling,
                "peak_gib": peak}

    _, _, batch = make_batch(a.batch, a.seq, model.config.vocab_size, a.device)

    def plain():
        with adapter.zeroed():
            t, peak, _ = timed(lambda: plain_fwd_bwd(model, batch), a.device, a.repeats)
        return row(t, peak)
    guarded("plain HF fwd+input-bwd", plain, res)

    def psg(fused: bool, ds_std: float, recompute: bool | None = None, b: int = a.batch):
        def go():
            fused_svd.FUSED_SVD, fused_svd.RECOMPUTE_H = fused, recompute
            set_delta_s(adapter, ds_std)
            bt = batch if b == a.batch else make_batch(b, a.seq, model.config.vocab_size,
                                                       a.device)[2]
            try:
                t, peak, _ = timed(lambda: per_sample_grads(adapter, bt), a.device, a.repeats)
            finally:
                fused_svd.FUSED_SVD = fused_svd.RECOMPUTE_H = None
            return row(t, peak, b * a.seq)
        return go
    guarded("psg reference, δS=0", psg(False, 0.0), res)
    guarded("psg reference, δS≠0", psg(False, 1e-3), res)
    guarded("psg fused, δS=0", psg(True, 0.0), res)
    guarded("psg fused, δS≠0", psg(True, 1e-3), res)
    guarded("psg fused, δS≠0, no recompute", psg(True, 1e-3, False), res)
    guarded("psg fused, δS≠0, recompute all", psg(True, 1e-3, True), res)
    if a.big_batch:
        guarded(f"psg fused, δS≠0, B{a.big_batch}", psg(True, 1e-3, None, a.big_batch), res)
        guarded(f"psg reference, δS≠0, B{a.big_batch}", psg(False, 1e-3, None, a.big_batch), res)
    res["4NT_flop"] = ideal


def step_section(a, model, adapter, N: int, ceiling: float, res: dict) -> None:
    """The whole replay step (stages.replay.replay_step: grads, cosines, projection, clip, AdamW)
    on B rows, projected arm: per-module arithmetic on one concatenated vector (probe/flat.py, the
    CUDA default) against the module-by-module loop, the per-sample gradients alone at the same
    δS ≠ 0, and a profile of the concatenated step's top operators."""
    from probe import flat
    from probe.stages.replay import ReplayConfig, replay_step
    from probe.vhack import random_directions, random_unit_directions

    prompts, comps, batch = make_batch(a.batch, a.seq, model.config.vocab_size, a.device)
    rows = [{"prompt_ids": p, "completion_ids": c} for p, c in zip(prompts, comps)]
    V = {k: {n: t.to(a.device) for n, t in random_directions(adapter.ranks, 1, i).items()}
         for i, k in enumerate(("nll", "random", "shuffled"))}
    null = {n: t.to(a.device) for n, t in random_unit_directions(adapter.ranks, 100, 9).items()}
    cfg = ReplayConfig(micro_batch=a.batch)
    fl = 4 * N * a.batch * a.seq

    def row(t: float, peak: float) -> dict:
        return {"s": t, "tflops_4NT": fl / t / 1e12, "pct_ceiling": 100 * fl / t / 1e12 / ceiling,
                "peak_gib": peak}

    def step(flat_ops: bool):
        def go():
            flat.FLAT_OPS = flat_ops
            set_delta_s(adapter, 1e-3)  # a trained student: the default δS branch at δS != 0
            opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr)
            try:
                t, peak, _ = timed(lambda: replay_step(adapter, opt, rows, V, cfg, 0, "nll",
                                                       a.device, null), a.device, a.repeats)
            finally:
                flat.FLAT_OPS = None
            return row(t, peak)
        return go

    def grads_alone():
        set_delta_s(adapter, 1e-3)
        t, peak, _ = timed(lambda: per_sample_grads(adapter, batch), a.device, a.repeats)
        return row(t, peak)
    guarded("whole replay step (concatenated ops)", step(True), res)
    guarded("whole replay step (module loop)", step(False), res)
    guarded("whole step's grads alone, δS≠0", grads_alone, res)
    guarded("step profile", lambda: step_profile(a, adapter, rows, V, cfg, null), res)


def auto_batch_section(a, model, adapter, res: dict) -> None:
    """What `micro_batch = "auto"` resolves to at this shape on this device, and whether a
    per-sample-gradient pass at that batch then fits (its peak against the device's memory)."""
    from probe.memory import resolve_grad_batch
    from probe.stages.replay import MICRO_BATCH_CAP

    def go():
        if a.device == "cuda":
            torch.cuda.empty_cache()
        n = resolve_grad_batch("auto", model, a.seq, a.device, "replay.micro_batch",
                               MICRO_BATCH_CAP)
        set_delta_s(adapter, 1e-3)
        batch = make_batch(n, a.seq, model.config.vocab_size, a.device)[2]
        t, peak, _ = timed(lambda: per_sample_grads(adapter, batch), a.device, 1)
        total = torch.cuda.get_device_properties(0).total_memory / 2**30 \
            if a.device == "cuda" else float("nan")
        return {"rows": n, "seq": a.seq, "s": t, "peak_gib": peak, "device_gib": total}
    guarded(f"auto micro_batch at T{a.seq}", go, res)


def rank_section(a, model, adapter, N: int, ceiling: float, res: dict) -> None:
    """Per-sample grads with a rank-r δS (`replay.rank`): the branch's U/Vh matmuls, which at
    full rank hold 1.34 N parameters and bound the full-rank rate, shrink with r. Runs last: it
    detaches the full-rank adapter."""
    from probe.adapters.antipasto import AntipastoConfig

    adapter.remove()
    _, _, batch = make_batch(a.batch, a.seq, model.config.vocab_size, a.device)
    fl = 4 * N * a.batch * a.seq
    for r in a.ranks:
        def go(r: int = r):
            for name, mod in model.named_modules():  # the planted factors, truncated
                U, Vh = a._factors[name] if name in a._factors else (None, None)
                if U is not None:
                    key = (tuple(mod.weight.shape), mod.weight.dtype, str(mod.weight.device), r,
                           _fingerprint(mod.weight))
                    Ur, Vr = U[:, :r].contiguous(), Vh[:r].contiguous()
                    SVD_CACHE._entries[key] = (Ur, Vr, _fingerprint(Ur), _fingerprint(Vr))
            low = AntipastoAdapter(model, AntipastoConfig(rank=r))
            try:
                set_delta_s(low, 1e-3)
                t, peak, _ = timed(lambda: per_sample_grads(low, batch), a.device, a.repeats)
            finally:
                low.remove()
            return {"s": t, "tflops_4NT": fl / t / 1e12,
                    "pct_ceiling": 100 * fl / t / 1e12 / ceiling, "peak_gib": peak}
        guarded(f"psg reference, δS≠0, rank {r}", go, res)


def step_profile(a, adapter, rows, V, cfg, null, top: int = 12) -> dict:
    """One concatenated-ops replay step under torch.profiler: the operators with the most self
    device (CPU: host) time, and the step's operator and kernel counts."""
    from torch.profiler import ProfilerActivity, profile

    from probe.stages.replay import replay_step

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr)
    replay_step(adapter, opt, rows, V, cfg, 0, "nll", a.device, null)  # warm
    sync(a.device)
    with profile(activities=acts) as prof:
        replay_step(adapter, opt, rows, V, cfg, 0, "nll", a.device, null)
        sync(a.device)
    dev = "device" if a.device == "cuda" else "cpu"
    events = prof.key_averages()

    def self_us(e) -> float:
        return e.self_device_time_total if dev == "device" else e.self_cpu_time_total
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return {"ops": int(sum(e.count for e in events)),
            "self_total_ms": sum(self_us(e) for e in events) / 1e3,
            "top": [[e.key, int(e.count), round(self_us(e) / 1e3, 2),
                     round(e.self_cpu_time_total / 1e3, 2)] for e in ranked]}


class IntTokenizer:
    """Prompts are space-separated token ids; enough of a tokenizer for probe.generate."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def generation_section(a, model, adapter, res: dict, bw: float) -> None:
    """steps/s of probe.generate (eager HF generate vs static cache + compile), δS ≠ 0 (a student)."""
    tok = IntTokenizer()
    model.generation_config.eos_token_id = 1
    vocab = model.config.vocab_size
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    factor_bytes = sum((b.U.numel() + b.Vh.numel()) * b.U.element_size()
                       for b in adapter.branches.values())
    res["decode_bound_steps_per_s"] = {"weights": bw * 1e12 / weight_bytes,
                                       "weights+δS factors": bw * 1e12 / (weight_bytes + factor_bytes)}
    set_delta_s(adapter, 1e-3)
    g = torch.Generator().manual_seed(5)
    for b in a.gen_batches:
        prompts = [" ".join(map(str, torch.randint(10, vocab, (a.prompt,), generator=g).tolist()))
                   for _ in range(b)]

        def run(compile: bool, calls: int):
            def go():
                secs = []
                for i in range(calls):
                    sync(a.device)
                    t0 = time.perf_counter()
                    out = gen.generate(model, tok, prompts, max_new_tokens=a.new, seed=i,
                                       batch_size=b, compile=compile, temperature=0.7)
                    sync(a.device)
                    secs.append(time.perf_counter() - t0)
                steps = max(len(s.completion_ids) for s in out)
                bound = res["decode_bound_steps_per_s"]["weights+δS factors"]
                r = {"first_call_s": secs[0], "steps": steps,
                     "steps_per_s": steps / min(secs[1:] or secs)}
                r["pct_decode_bound"] = 100 * r["steps_per_s"] / bound
                if compile and len(secs) > 1:
                    r["compile_s"] = secs[0] - min(secs[1:])
                return r
            return go
        guarded(f"generate eager B{b}", run(False, 2 if a.device == "cuda" else 1), res)
        if a.compile:
            guarded(f"generate static+compile B{b}", run(True, 3), res)
        if b == max(a.gen_batches):
            guarded(f"generation profile B{b}",
                    lambda: generation_profile(a, model, tok, prompts, b), res)


def generation_profile(a, model, tok, prompts: list[str], b: int, top: int = 10) -> dict:
    """One generate call (compiled when the run compiles, after its warm-up calls) under
    torch.profiler: wall time against the time the device was busy (kernels' sum), so a
    host-bound decode loop shows as busy << wall; and the operators with the most device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    sync(a.device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        out = gen.generate(model, tok, prompts, max_new_tokens=a.new, seed=0, batch_size=b,
                           compile=a.compile, temperature=0.7)
        sync(a.device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA"] if a.device == "cuda" else []
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    ranked = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return {"wall_s": wall, "device_busy_s": busy, "busy_pct": 100 * busy / wall,
            "steps": max(len(s.completion_ids) for s in out), "compiled": a.compile,
            "top": [[e.key, int(e.count), round(e.self_device_time_total / 1e3, 2)]
                    for e in ranked]}


def fidelity_section(a, model, factors: dict, res: dict) -> None:
    """Per-row cosine of per-sample δS gradients (δS = 0, as every arm starts) against float32,
    for several precision settings, on the same rows."""
    _, _, batch = make_batch(a.fid_batch, a.fid_seq, model.config.vocab_size, a.device, seed=7)
    # the float32 model: the same (bf16-valued) weights, the same factors upcast
    m32 = build_model(QWEN3_4B if not a.tiny else TINY, a.layers, a.device, torch.float32)
    m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    for name, (U, Vh) in factors.items():
        seed_cache(m32.get_submodule(name).weight, U.float(), Vh.float())
    ad32 = AntipastoAdapter(m32)
    flat = lambda ps: torch.cat([g.flatten(1).double() for g in ps.grads.values()], 1)  # noqa: E731
    settings: dict[str, tuple] = {}

    def measure(adapter, fused: bool | None, tf32: bool = False, autocast: bool = False):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        fused_svd.FUSED_SVD = fused

        def go():
            with torch.autocast(a.device, torch.bfloat16, enabled=autocast):
                return per_sample_grads(adapter, batch)
        try:
            t, peak, out = timed(go, a.device, 1)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
            fused_svd.FUSED_SVD = None
        return t, peak, flat(out)

    t32, p32, ref = measure(ad32, None)
    settings["float32 (reference)"] = (t32, p32, ref)
    if a.device == "cuda":
        settings["float32 + tf32 matmuls"] = measure(ad32, None, tf32=True)
    # float32 weights and residual stream, bf16 matmuls (autocast; the reference branch, whose
    # ops autocast knows)
    settings["float32 + bf16 autocast"] = measure(ad32, False, autocast=True)
    ad32.remove()
    del ad32, m32
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    adapter = a._adapter
    set_delta_s(adapter, 0.0)
    settings["bf16, fused branch"] = measure(adapter, True)
    settings["bf16, reference branch"] = measure(adapter, False)
    for name, (t, peak, g) in settings.items():
        cos = F.cosine_similarity(g, ref, dim=1)
        rel = (g - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-30)
        res[f"fidelity: {name}"] = {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()),
                                    "max_rel_l2": float(rel.max()), "s": t, "peak_gib": peak,
                                    "time_vs_float32": t / t32}


def estimate_section(a, res: dict) -> None:
    """R1-R5 wall time at configs/qwen3-4b.toml's numbers, from this run's rates. Assumptions:
    every completion runs to max_new_tokens (worst case), prompts of `--real-prompt` tokens, a
    training pass's cost per token as measured at B × T (the whole replay step, default path; else
    the per-sample grads, fused, δS ≠ 0), a forward-only pass a third of it, generation at the
    measured steps/s of the nearest measured batch (≥ 64: B64's)."""
    import tomllib
    cfg = tomllib.loads((REPO / "configs" / "qwen3-4b.toml").read_text())
    grad = res.get("whole replay step (concatenated ops)", {})
    grad = grad if "s" in grad else res.get("psg fused, δS≠0", {})
    if "s" not in grad:
        return
    s_tok = grad["s"] / (a.batch * a.seq)
    layer_scale = 36 / a.layers  # a shallower run's rates, scaled to the real depth

    def gen_rate(b: int, compiled: bool) -> float | None:
        key = "generate static+compile" if compiled else "generate eager"
        got = {bb: res.get(f"{key} B{bb}", {}).get("steps_per_s") for bb in a.gen_batches}
        got = {bb: r for bb, r in got.items() if r}
        if not got:
            return None
        near = min(got, key=lambda bb: (abs(bb - min(b, max(got))), bb))
        return got[near] / layer_scale

    def compile_s() -> float:
        got = [res.get(f"generate static+compile B{bb}", {}).get("compile_s") for bb in a.gen_batches]
        got = [c for c in got if c]
        return max(got) * layer_scale if got else float("nan")

    def gen_s(n: int, b: int, new: int, compiled: bool) -> float:
        r = gen_rate(b, compiled)
        return math.ceil(n / b) * new / r if r else float("nan")

    p, v, rp, se, gr = (cfg.get(k, {}) for k in ("pool", "vhack", "replay", "student_eval", "grpo"))
    P = a.real_prompt
    T1 = P + p["max_new_tokens"]
    pool_rows = p["steps"] * p["problems_per_step"] * p["group_size"]
    base_rows = p.get("base_reference_steps", 2) * p["problems_per_step"] * p["group_size"]
    arms = len(cfg.get("arms", [1, 2, 3, 4]))
    eval_rows = se["n_problems"] * se["group_size"] * (1 + arms)
    T5 = P + gr["max_new_tokens"]
    g_rows = gr["problems_per_step"] * gr["group_size"]
    runs5 = len(gr["seeds"]) * len(gr["arms"]) * gr["steps"]
    out = {}
    for compiled in (False, True):
        tag = "compiled" if compiled else "eager"
        r1 = gen_s(pool_rows + base_rows, p["gen_batch_size"], p["max_new_tokens"], compiled)
        vh = pool_rows * T1 * s_tok * layer_scale  # one per-sample-gradient pass over the pool
        r23 = arms * pool_rows * T1 * s_tok * layer_scale \
            + gen_s(eval_rows, se["gen_batch_size"], p["max_new_tokens"], compiled)
        per_step = (gen_s(g_rows, gr["gen_batch_size"], gr["max_new_tokens"], compiled)
                    + g_rows * T5 * s_tok * layer_scale * (1 / 3 + gr["updates_per_batch"])
                    + (256 * 2 * T5 * s_tok * layer_scale) / gr.get("refresh_every", 2))
        # compiled: one compile per generate shape per process: the pool and the evaluations
        # (one process), then every R5 arm x seed (one process each under --jobs)
        compiles = (2 + len(gr["seeds"]) * len(gr["arms"])) * compile_s() if compiled else 0.0
        out[tag] = {"R1 pool (h)": r1 / 3600, "v_hack (h)": vh / 3600,
                    "R2-R4 replay + eval (h)": r23 / 3600, "R5 GRPO (h)": runs5 * per_step / 3600,
                    "compile (h)": compiles / 3600,
                    "total (h)": (r1 + vh + r23 + runs5 * per_step + compiles) / 3600}
    res["estimate R1-R5 on one H200"] = out


# -- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke: a tiny shape, seconds")
    ap.add_argument("--layers", type=int, default=None, help="default 36 (Qwen3-4B)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--big-batch", type=int, default=16, help="0: skip")
    ap.add_argument("--seq", type=int, default=1024, help="prompt + completion tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gen-batches", type=int, nargs="*", default=[16, 64])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--fid-batch", type=int, default=4)
    ap.add_argument("--fid-seq", type=int, default=512)
    ap.add_argument("--real-prompt", type=int, default=400, help="R1-R5 estimate's prompt tokens")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=("grads", "step", "generate", "fidelity"))
    ap.add_argument("--ranks", type=int, nargs="*", default=[256],
                    help="δS ranks for the rank section (runs last; none: skip)")
    ap.add_argument("--json", help="also write every number to this file")
    a = ap.parse_args(argv)
    if a.tiny:
        a.device = "cpu" if a.device == "cuda" and not torch.cuda.is_available() else a.device
        a.batch, a.big_batch, a.seq, a.repeats = 2, 0, 32, 1
        a.gen_batches, a.prompt, a.new, a.fid_batch, a.fid_seq = [2], 8, 4, 2, 16
        a.compile, a.ranks = False, [8]
    shape = TINY if a.tiny else QWEN3_4B
    a.layers = a.layers or shape["num_hidden_layers"]
    dtype = torch.bfloat16
    res: dict[str, Any] = {"args": vars(a).copy(), "torch": torch.__version__}
    if a.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    ceil = ceilings(a.device, dtype)
    res["ceilings"] = ceil
    model = build_model(shape, a.layers, a.device, dtype)
    factors = plant_svd(model)
    res["build_s"] = time.perf_counter() - t0
    N = non_embedding_params(model)
    res["N_non_embedding"] = N
    adapter = AntipastoAdapter(model)
    a._adapter = adapter
    if "grads" not in a.skip:
        grads_section(a, model, adapter, N, ceil["matmul_tflops"], res)
    if "step" not in a.skip:
        step_section(a, model, adapter, N, ceil["matmul_tflops"], res)
        auto_batch_section(a, model, adapter, res)
    if "fidelity" not in a.skip:
        guarded("fidelity", lambda: fidelity_section(a, model, factors, res) or {"done": True},
                res)
    if "generate" not in a.skip:
        generation_section(a, model, adapter, res, ceil["copy_tbps"])
    if a.ranks and "grads" not in a.skip:
        a._factors = factors
        rank_section(a, model, adapter, N, ceil["matmul_tflops"], res)
    estimate_section(a, res)
    res["total_s"] = time.perf_counter() - t0
    report(a, res)
    if a.json:
        res["args"].pop("_adapter", None)
        res["args"].pop("_factors", None)
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return res


def report(a, res: dict) -> None:
    c = res["ceilings"]
    print(f"\n== bench_real_shape: {a.layers} layers, {res.get('gpu', a.device)}, torch "
          f"{res['torch']}, N = {res['N_non_embedding'] / 1e9:.3g}e9 non-embedding params ==")
    print(f"ceilings (this run): bf16 matmul {c['matmul_tflops']:.3g} TFLOP/s, copy "
          f"{c['copy_tbps']:.3g} TB/s; model build {res['build_s']:.1f} s")
    print(f"per-sample grads, B{a.batch} x T{a.seq} (4NT = {res.get('4NT_flop', 0):.3g} flop):")
    print(f"  {'what':<42}{'s':>8}{'TFLOP/s':>9}{'% ceil':>8}{'peak GiB':>10}")
    for k, v in res.items():
        if isinstance(v, dict) and k.startswith(("psg", "plain", "whole")) \
                and ("error" in v or "tflops_4NT" in v):
            if "error" in v:
                print(f"  {k:<42}{v['error'][:60]}")
            else:
                print(f"  {k:<42}{v['s']:>8.3f}{v['tflops_4NT']:>9.0f}{v['pct_ceiling']:>7.1f}%"
                      f"{v['peak_gib']:>10.1f}")
    steps = [res.get(k, {}).get("s") for k in ("whole replay step (concatenated ops)",
                                              "whole step's grads alone, δS≠0")]
    if None not in steps:
        print(f"  the step's time beyond its per-sample grads: {100 * (steps[0] / steps[1] - 1):.1f}%"
              f" ({steps[0] - steps[1]:.3f} s)")
    auto = res.get(f"auto micro_batch at T{a.seq}", {})
    if "rows" in auto:
        print(f"  micro_batch = \"auto\" at T{a.seq}: {auto['rows']} rows, ran in {auto['s']:.2f} s, "
              f"peak {auto['peak_gib']:.1f} of {auto['device_gib']:.0f} GiB")
    prof = res.get("step profile", {})
    if "top" in prof:
        print(f"  step profile: {prof['ops']} operator calls, {prof['self_total_ms']:.0f} ms self "
              f"time; top (name, calls, self ms, self host ms):")
        for name, calls, ms, host in prof["top"]:
            print(f"    {name[:48]:<48}{calls:>7}{ms:>9.1f}{host:>9.1f}")
    if "decode_bound_steps_per_s" in res:
        db = res["decode_bound_steps_per_s"]
        print(f"generation, prompt {a.prompt} + {a.new} new tokens; decode bound "
              f"{db['weights']:.0f} steps/s (weights), {db['weights+δS factors']:.0f} (+ δS factors):")
        for k, v in res.items():
            if k.startswith("generate"):
                if "error" in v:
                    print(f"  {k:<32}{v['error'][:80]}")
                else:
                    extra = f", compile {v['compile_s']:.0f} s" if "compile_s" in v else ""
                    print(f"  {k:<32}{v['steps_per_s']:>8.1f} steps/s = {v['pct_decode_bound']:.1f}%"
                          f" of bound (first call {v['first_call_s']:.1f} s{extra})")
    for k, v in res.items():
        if k.startswith("generation profile") and "wall_s" in v:
            print(f"  {k} ({'compiled' if v['compiled'] else 'eager'}, {v['steps']} steps): "
                  f"wall {v['wall_s']:.2f} s, device busy {v['device_busy_s']:.2f} s "
                  f"({v['busy_pct']:.0f}%); top device time (name, calls, ms):")
            for name, calls, ms in v["top"]:
                print(f"    {name[:60]:<60}{calls:>7}{ms:>9.1f}")
    print(f"fidelity, B{a.fid_batch} x T{a.fid_seq}, per-row cosine vs float32 (pass: ≥ 0.99):")
    for k, v in res.items():
        if k.startswith("fidelity:"):
            print(f"  {k[10:]:<28} min cos {v['min_cos']:.4f}  mean {v['mean_cos']:.4f}  max rel "
                  f"L2 {v['max_rel_l2']:.3f}  {v['s']:.2f} s ({v['time_vs_float32']:.2f}x fp32)"
                  f"  peak {v['peak_gib']:.1f} GiB")
    if "error" in res.get("fidelity", {}):
        print(f"  fidelity failed: {res['fidelity']['error']}")
    for tag, est in res.get("estimate R1-R5 on one H200", {}).items():
        print(f"R1-R5 estimate at configs/qwen3-4b.toml, generation {tag}: "
              + ", ".join(f"{k} {v:.1f}" for k, v in est.items()))
    print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
