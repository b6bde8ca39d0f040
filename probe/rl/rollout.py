"""Mixed-policy GRPO groups: sample, grade, and record each row's behaviour log-probs.

A group is one problem's G rows: `n_teacher` from the teacher (sampled once per seed and shared by
every arm, so arms differ only in what they do with the same data) and `n_student` from the current
student. Each row keeps the log-probs its sampling policy gave its tokens, taken when it was sampled.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Sequence

import torch

from probe.artifacts import AUTO
from probe.batch import collate
from probe.encoding import encode_prompt, pad_id
from probe.env.grader import Grader
from probe.env.problems import Problem
from probe.memory import number, oom_names_knob, resolve_grad_batch
from probe.rl.config import GEN_BATCH_CAP, MICRO_BATCH_CAP, MICRO_BATCH_KNOB, GRPOConfig
from probe.rl.distributed import gather_in_order, rank_and_size, shard
from probe.rl.dr_grpo import completion_logprobs
from probe.rollout import sample_and_grade
from probe.world.base import World

GROUP_FIELDS = ("problem_id", "step", "group", "source", "prompt_ids", "completion_ids", "label",
                "hacked", "hack_attempt", "gt_pass", "reward", "behaviour_logp")


def step_problems(problems: Sequence[Problem], cfg: GRPOConfig, seed: int, step: int
                  ) -> list[Problem]:
    """The P problems of (seed, step): a seeded permutation per seed, cycled (same for every arm)."""
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    n = cfg.problems_per_step
    return [problems[order[(step * n + j) % len(order)]] for j in range(n)]


def sampling_kw(world: World, cfg: GRPOConfig) -> dict[str, Any]:
    s = world.sampling
    return dict(temperature=cfg.temperature if cfg.temperature is not None else s.temperature,
                top_p=cfg.top_p if cfg.top_p is not None else s.top_p,
                max_new_tokens=cfg.max_new_tokens or s.max_new_tokens,
                batch_size=cfg.gen_batch_size, batch_knob="grpo.gen_batch_size",
                batch_cap=GEN_BATCH_CAP)


@torch.no_grad()
def add_logprobs(model: torch.nn.Module, world: World, rows: list[dict[str, Any]], key: str,
                 micro_batch: int) -> None:
    """rows[i][key] = log π_model of each completion token (teacher-forced, temperature 1).
    `micro_batch`: grpo.micro_batch, resolved (`sized`)."""
    pad = pad_id(world.tokenizer)
    device = next(model.parameters()).device
    micro_batch = number(micro_batch, MICRO_BATCH_KNOB)
    with oom_names_knob(MICRO_BATCH_KNOB, micro_batch):
        for i in range(0, len(rows), micro_batch):
            part = rows[i:i + micro_batch]
            batch = collate([r["prompt_ids"] for r in part], [r["completion_ids"] for r in part],
                            pad).to(device)
            for r, lp in zip(part, completion_logprobs(model, batch)):
                r[key] = lp


def sized(cfg: GRPOConfig, model: torch.nn.Module, world: World, problems: Sequence[Problem],
          device: str) -> GRPOConfig:
    """`cfg` with "auto" micro_batch resolved for `model` on `device` at the longest row these
    problems can make (prompt + max_new_tokens): before any sampling, so a batch that cannot fit
    fails at once, not after a step's generation."""
    if cfg.micro_batch != AUTO:
        return cfg
    longest = max((len(encode_prompt(world.tokenizer, world.render(p, cfg.hint)))
                   for p in problems), default=1)
    seq_len = longest + (cfg.max_new_tokens or world.sampling.max_new_tokens)
    return replace(cfg, micro_batch=resolve_grad_batch(cfg.micro_batch, model, seq_len, device,
                                                       MICRO_BATCH_KNOB, MICRO_BATCH_CAP))


class CachedGrader:
    """A grader that grades each distinct (problem, evaluator, completion) once per process.

    Grading is a deterministic function of those three (the sandbox charges CPU, not load), and a
    small policy repeats itself: on the embedded world 1,280 GRPO rows of one arm hold 248 distinct
    completions. Real-model completions rarely repeat, so there the cache costs nothing.
    """

    _memo: dict[tuple[str, Any, str | None, str], Any] = {}
    MAX_ENTRIES = 200_000

    def __init__(self, grader: Grader, config: Any = None) -> None:
        self.grader = grader
        self.config_key = repr(config)  # grades under another grader config are other grades
        self.hits = self.misses = 0

    def grade_many(self, items: Sequence[tuple[Problem, str, str | None]]) -> list[Any]:
        keys = [(self.config_key, p.id, ev, text) for p, text, ev in items]
        todo = {k: it for k, it in zip(keys, items) if k not in self._memo}
        if todo:
            if len(self._memo) + len(todo) > self.MAX_ENTRIES:
                self._memo.clear()
            for k, g in zip(todo, self.grader.grade_many(list(todo.values()))):
                self._memo[k] = g
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return [self._memo[k] for k in keys]


def group_seed(seed: int, group: int) -> int:
    """The sampling seed of one group of a step (`seed`: the step's): groups are < 1000 per step."""
    return seed * 1000 + group


def policy_rows(model: torch.nn.Module, world: World, problems: Sequence[Problem], n_per: int,
                source: str, cfg: GRPOConfig, seed: int, step: int,
                grader: Grader | CachedGrader) -> list[dict[str, Any]]:
    """`n_per` graded samples per problem from `model`, with behaviour log-probs; `group` is the
    problem's index in the step. With `cfg.seed_per_group`, each group is sampled under its own
    seed, and under torch.distributed each rank samples its share of the groups; every rank gets
    every row, in group order."""
    if n_per == 0:
        return []
    if cfg.seed_per_group:
        mine, idx = shard(problems)
        local = [_group_rows(model, world, p, j, n_per, source, cfg, seed, step, grader)
                 for p, j in zip(mine, idx)]
        return [r for g in gather_in_order(local, idx, len(problems)) for r in g]
    if rank_and_size()[1] > 1:
        raise ValueError("GRPO under torch.distributed needs grpo.seed_per_group = true: with one "
                         "seed per step's batch, N ranks would not sample the rows of one process")
    rows = sample_and_grade(model, world, problems, cfg.hint, n_per, seed, grader,
                            desc=f"{source} step {step}", step=step, source=source,
                            **sampling_kw(world, cfg))
    for r in rows:
        r["group"] = r["index"] // n_per
    add_logprobs(model, world, rows, "behaviour_logp", cfg.micro_batch)
    return rows


def _group_rows(model: torch.nn.Module, world: World, problem: Problem, group: int, n_per: int,
                source: str, cfg: GRPOConfig, seed: int, step: int,
                grader: Grader | CachedGrader) -> list[dict[str, Any]]:
    """One group's rows: sampled under the group's own seed, log-probs over the group alone (so
    they do not depend on what else a rank holds); `index` is the row's position in the step."""
    rows = sample_and_grade(model, world, [problem], cfg.hint, n_per, group_seed(seed, group),
                            grader, desc=f"{source} step {step} group {group}", step=step,
                            source=source, **sampling_kw(world, cfg))
    for k, r in enumerate(rows):
        r.update(group=group, index=group * n_per + k)
    add_logprobs(model, world, rows, "behaviour_logp", cfg.micro_batch)
    return rows


def group_stats(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Fraction of groups with reward variance, and with a teacher/student mean-reward gap."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    var = gap = student_var = 0
    for g in groups.values():
        rewards = [r["reward"] for r in g]
        var += max(rewards) > min(rewards)
        own = [r["reward"] for r in g if r["source"] == "student"]
        student_var += bool(own) and max(own) > min(own)
        t = [r["reward"] for r in g if r["source"] == "teacher"]
        s = [r["reward"] for r in g if r["source"] == "student"]
        gap += bool(t and s) and abs(sum(t) / len(t) - sum(s) / len(s)) > 1e-9
    n = max(len(groups), 1)
    return {"n_groups": len(groups), "frac_groups_with_variance": var / n,
            "frac_groups_teacher_student_gap": gap / n,
            # variance among the student's own rows: the mixed groups' variance can come from
            # the teacher/student gap alone
            "frac_groups_student_variance": student_var / n}
