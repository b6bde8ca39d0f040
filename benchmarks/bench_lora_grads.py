"""Per-sample grads on CPU, LoRA (nonzero_b, frozen_a) vs δS: one process, 1 thread, CPU time
(process_time: on a shared machine wall time is noise), min of 3; batched one-backward vs a
per-sample loop, plus the flat size and the per-sample gradients' memory.

usage: PYTHONPATH=. python benchmarks/bench_lora_grads.py {tiny,qwen3-0.6b-4L,qwen3-0.6b-4L-v8k} B T
(the 0.6b shapes are Qwen3-0.6B's widths with 4 of its 28 layers; -v8k an 8k vocabulary, so the
LM head does not dominate)."""
import copy, sys, time
import torch
from probe.tiny import tiny_qwen3
from probe.batch import collate, TokenBatch
from probe.grads import per_sample_grads, per_sample_loss
from probe.adapters.antipasto import AntipastoAdapter
from probe.adapters.lora import LoraAdapter, LoraSpec

torch.set_num_threads(1)
shape, B, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfgs = {"tiny": dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, num_hidden_layers=2),
        "qwen3-0.6b-4L": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                              num_hidden_layers=4),
        "qwen3-0.6b-4L-v8k": dict(vocab_size=8192, hidden_size=1024, intermediate_size=3072,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                              num_hidden_layers=4)}
cfg = cfgs[shape]
base = tiny_qwen3(seed=0, pad_token_id=0, eos_token_id=1, **cfg)
g = torch.Generator().manual_seed(1)
V = cfg["vocab_size"]
prompts = [torch.randint(2, V, (T // 2,), generator=g).tolist() for _ in range(B)]
comps = [torch.randint(2, V, (T // 2 - i,), generator=g).tolist() for i in range(B)]
batch = collate(prompts, comps, pad_id=0)

def cpu(f, reps=3):
    f()
    ts = []
    for _ in range(reps):
        t = time.process_time(); f(); ts.append(time.process_time() - t)
    return min(ts)

def loop(model, params):
    ps = [p for v in params.values() for p in v]
    for n in range(B):
        keep = batch.attention_mask[n].bool()
        row = TokenBatch(batch.input_ids[n, keep][None], batch.attention_mask[n, keep][None],
                         batch.loss_mask[n, keep][None], torch.arange(int(keep.sum()))[None])
        torch.autograd.grad(per_sample_loss(model, row)[0], ps)

def plain(model):  # the same loss, one backward, no adapter: the floor
    per_sample_loss(model, batch).sum().backward()

m0 = copy.deepcopy(base)
m0.lm_head.weight.requires_grad_(True)
for p in m0.parameters(): p.requires_grad_(False)
m0.model.norm.weight.requires_grad_(True)
print(f"{shape} B={B} T={T}: plain forward+backward (no adapter) {cpu(lambda: plain(m0)):.2f}s CPU", flush=True)
for kind in ("nonzero_b", "frozen_a", "delta_s"):
    model = copy.deepcopy(base)
    t = time.process_time()
    if kind == "delta_s":
        ad = AntipastoAdapter(model)
        for p in ad.parameters(): torch.nn.init.normal_(p, std=1e-3)
        params, size = {n: [p] for n, p in ad.named_params().items()}, ad.total_rank
    else:
        ad = LoraAdapter(model, LoraSpec(init=kind))
        params, size = ad.module_params(), ad.total_size
    build = time.process_time() - t
    tb = cpu(lambda: per_sample_grads(ad, batch))
    tl = cpu(lambda: loop(model, params))
    print(f"  {kind:10s} flat size {size:>10,d}  build {build:6.1f}s  batched {tb:6.2f}s  "
          f"loop {tl:6.2f}s  loop/batched {tl/tb:4.1f}x  per-sample grads {B*size*4/2**20:6.1f} MB",
          flush=True)
