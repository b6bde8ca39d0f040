"""R6's learning-rate matching: the LoRA student's vanilla GRPO arm at several learning rates, beside
δS's vanilla arm (R5's own artifact), on the same teacher rows and seeds.

The criterion (README, R6): choose the LoRA rate whose vanilla hack-rate rise (steps 0–2 → 13–15)
is closest to δS's, among those whose end pass rate is within `--pass-tol` of δS's. Prints one row
per rate; the chosen value goes into the config's `r6.grpo_lr`.

    python benchmarks/calibrate_r6_lr.py --lrs 1e-3 3e-3 1e-2 --seeds 41 [--config FILE] [--device cpu]
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from probe.checks_grpo import rise
from probe.checks_r6 import MATCH_TOL, end_pass_rate
from probe.config import load_config
from probe.layout import GRPOPaths, grpo_paths, world_identity
from probe.orchestrate import Phase1Run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", type=float, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="out")
    ap.add_argument("--pass-tol", type=float, default=MATCH_TOL)
    a = ap.parse_args()
    from probe.arms import get_arm
    from probe.stages.grpo import ensure_grpo, run_grpo_arm
    from probe.stages.phase1 import ensure_vhack, stage_keys
    from probe.stages.r6 import ensure_lora_vhack
    from probe.layout import r6_paths

    cfg = load_config(a.config)
    seeds = a.seeds or list(cfg.grpo.seeds)
    from probe.world.select import get_world

    run = Phase1Run(lambda: get_world(cfg.world, out_dir=a.out, source=a.config), cfg, a.out,
                    a.device)
    p1 = run.ensure(ensure_vhack)
    world = run.world
    V_ds = ensure_vhack(world, cfg, p1, a.device)
    ident = world_identity(world)
    key = stage_keys(world, cfg)["v_hack"]
    r5 = grpo_paths(ident, key, cfg.grpo, a.out, cfg.grader)
    ensure_grpo(world, cfg.grpo, r5, V_ds, device=a.device, grader_config=cfg.grader,
                adapter_spec=cfg.replay.adapter_spec(), only=[("vanilla", s) for s in seeds])
    from probe.checks_grpo import load_manifests

    ds = load_manifests(r5.root, ["vanilla"], seeds)["vanilla"]
    r_ds, pass_ds = rise(ds)["rise"], end_pass_rate(ds)
    print(f"δS vanilla (lr {cfg.grpo.lr:g}): rise {r_ds:+.3f}, end pass {pass_ds:.3f}")
    V_lora = ensure_lora_vhack(world, cfg, r6_paths(ident, key, cfg, a.out), a.device)
    rows = []
    for lr in a.lrs:
        paths = GRPOPaths(Path(a.out) / "probe_r6_calibration" / f"{cfg.r6.init}_lr{lr:g}",
                          r5.teacher_root)
        m = {s: run_grpo_arm(world, replace(cfg.grpo, lr=lr), paths,
                             get_arm("grpo", "lora_vanilla"), s, V_lora,
                             adapter_spec=cfg.r6.adapter_spec(), device=a.device,
                             grader_config=cfg.grader) for s in seeds}
        r, p = rise(m)["rise"], end_pass_rate(m)
        rows.append((lr, r, p))
        print(f"LoRA vanilla lr {lr:g}: rise {r:+.3f} (δS {r_ds:+.3f}), end pass {p:.3f} "
              f"(δS {pass_ds:.3f})", flush=True)
    ok = [t for t in rows if abs(t[2] - pass_ds) <= a.pass_tol] or rows
    best = min(ok, key=lambda t: abs(t[1] - r_ds))
    print(f"chosen r6.grpo_lr = {best[0]:g} (rise {best[1]:+.3f} vs δS {r_ds:+.3f})")


if __name__ == "__main__":
    main()
