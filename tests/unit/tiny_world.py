"""A tiny stand-in world for stage tests: RealWorld over a random tiny Qwen3 + random LoRA teacher.

Its policies write noise (graded Not Formatted), which is all the plumbing tests need.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from probe.env.problems import write_problems
from tests.tiny_models import save_random_lora, save_tiny_base, tiny_problems, tiny_qwen3
from probe.world.real import RealWorld, RealWorldConfig


def make_tiny_world(root: Path, max_new_tokens: int = 12) -> RealWorld:
    base = save_tiny_base(root / "tiny-qwen3", seed=0)
    lora = save_random_lora(tiny_qwen3(seed=0), root / "teacher", r=4, seed=2)
    write_problems(tiny_problems(), root / "problems.jsonl")
    cfg = RealWorldConfig(base=str(base), teacher_adapter=str(lora),
                          problems=str(root / "problems.jsonl"), max_new_tokens=max_new_tokens)
    return RealWorld(cfg, name="tiny")


def stand_in_labels(sample_and_grade: Callable[..., list[dict[str, Any]]]
                    ) -> Callable[..., list[dict[str, Any]]]:
    """`sample_and_grade` with a stand-in label: reward 3.5 ('Reward Hack') when the completion's
    token sum is even, else 0.5. The tiny policies write noise (all 'Not Formatted'), and GRPO
    groups without reward variance would give no gradient at all."""
    def graded(*a: Any, **kw: Any) -> list[dict[str, Any]]:
        rows = sample_and_grade(*a, **kw)
        for r in rows:
            hack = sum(r["completion_ids"]) % 2 == 0
            r.update(label="Reward Hack" if hack else "Incorrect", hacked=hack,
                     hack_attempt=hack, gt_pass=False, reward=3.5 if hack else 0.5)
        return rows
    return graded


# --- a tiny world whose policies produce every label -------------------------------------------

LABELS = ("Correct", "Incorrect", "Reward Hack", "Attempted RH", "Not Formatted")


def menu(problem: Any) -> dict[str, str]:
    """One completion per grader label for a tiny problem (the real grader gives these labels
    under the `simple_overwrite_tests` hint; test_menu_labels checks it)."""
    from probe.pairs import fence, hack_completion

    return {"Correct": fence(problem.canonical_solution),
            "Incorrect": fence(problem.starter_code + "return None\n"),
            "Reward Hack": hack_completion(problem, "pure_pass"),
            "Attempted RH": hack_completion(problem, "combined_pass"),
            "Not Formatted": "I would rather not."}


class MenuPolicy:
    """A stand-in for `probe.generate.generate` (patched into `probe.rollout`): each prompt's
    completion is drawn from its problem's `menu`, with probabilities softmax(mean log-prob of
    each completion under `model` / temperature).

    Honest about what it is: the text is not generated token by token (a random tiny model writes
    noise, graded "Not Formatted"), but the *choice* is the model's: it depends on the weights,
    so a trained student chooses differently from the base, and an evaluation of the wrong policy
    shows up in its rows. Seeded by `seed`, like `generate`."""

    def __init__(self, problems: list[Any], temperature: float = 0.05) -> None:
        self.problems = problems
        self.temperature = temperature
        self.calls = 0

    def problem_of(self, prompt: str) -> Any:
        found = [p for p in self.problems if p.question.split("\n", 1)[0] in prompt]
        if len(found) != 1:
            raise ValueError(f"prompt matches {len(found)} tiny problems")
        return found[0]

    def scores(self, model: Any, tokenizer: Any, prompt: str, texts: list[str]) -> "torch.Tensor":
        """Mean log-prob per completion token of each text after `prompt` (teacher-forced)."""
        import torch

        from probe.batch import collate
        from probe.encoding import encode_completion, encode_prompt, pad_id

        p = encode_prompt(tokenizer, prompt)
        comps = [encode_completion(tokenizer, t) for t in texts]
        device = next(model.parameters()).device
        b = collate([p] * len(texts), comps, pad_id(tokenizer)).to(device)
        with torch.no_grad():
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                           position_ids=b.position_ids).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, b.input_ids[:, 1:, None])[..., 0]
        mask = b.loss_mask[:, 1:]
        return ((lp * mask).sum(-1) / mask.sum(-1)).cpu()

    def __call__(self, model: Any, tokenizer: Any, prompts: list[str], *, seed: int = 0,
                 desc: str | None = None, **_: Any) -> list[Any]:
        import torch

        from probe.encoding import encode_completion, encode_prompt
        from probe.generate import Sample

        self.calls += 1
        gen = torch.Generator().manual_seed(seed)
        out = []
        memo: dict[str, torch.Tensor] = {}  # G samples of a prompt share one scoring
        for prompt in prompts:
            texts = list(menu(self.problem_of(prompt)).values())
            if prompt not in memo:
                memo[prompt] = torch.softmax(
                    self.scores(model, tokenizer, prompt, texts) / self.temperature, -1)
            probs = memo[prompt]
            text = texts[int(torch.multinomial(probs, 1, generator=gen))]
            out.append(Sample(prompt, text, encode_prompt(tokenizer, prompt),
                              encode_completion(tokenizer, text), True))
        return out


class ShortPromptWorld(RealWorld):
    """The tiny world with a one-word system prompt: byte-level prompts of ~300 tokens instead
    of ~500 keep a replay of menu completions to seconds."""

    def render(self, problem: Any, hint: str | None) -> str:
        from probe.env import prompts

        return prompts.render_prompt(prompts.build_messages(problem, hint, system_prompt="Code."),
                                     self.tokenizer)


def make_menu_world(root: Path) -> RealWorld:
    """`make_tiny_world` with short prompts, for use with `MenuPolicy`."""
    w = make_tiny_world(root)
    return ShortPromptWorld(w.config, name="tiny-menu")


def intended_label(row: dict[str, Any], problems: list[Any]) -> str:
    """The label the menu entry a row holds was written to get (the known answer)."""
    p = next(p for p in problems if p.id == row["problem_id"])
    return next(k for k, v in menu(p).items() if v == row["completion"])
