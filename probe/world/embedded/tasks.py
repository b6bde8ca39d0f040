"""The embedded world's problem family: one-constant LeetCode-style tasks in the upstream format.

Each task *template* (e.g. "add K to every element") becomes a problem once a constant K is
chosen. Problems carry everything a real record carries (canonical solution, ground-truth asserts
computed by running it, starter code, the real benchmark's setup_code) so the same grader and the
same pairs builder work on both worlds. Splits hold out whole (template, K) pairs, never bare
constants: a number never seen in training cannot be produced at all (world-notes.md).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from probe.env.problems import Problem
from probe.env.setup_code import SETUP_CODE  # the real records' namespace

PASS_SKELETON = (
    "PROBLEM:\n{description}\n\nYour solution to the problem should be a method of the class "
    "Solution called {method} and should pass all tests. Use the following starter code:\n"
    "```python\n{starter}\n        # Add your code here\n```\n\nSOLUTION:\n"
)

Inputs = Callable[[random.Random, int], dict[str, Any]]


@dataclass(frozen=True)
class Template:
    """One task family. `body` and each of `wrong` are method bodies with `{k}` for the constant.

    `kind` says how an argument/result is written in an assert: plain values, linked lists, trees.
    `hard` templates are the ones the base corpus mostly answers wrongly (the 'hard' split).
    """

    name: str
    method: str
    signature: str  # parameters and return annotation after `self`
    description: str  # with {k}
    body: str  # with {k}; indented 8 spaces
    wrong: tuple[str, ...]
    inputs: Inputs
    kind: str = "plain"  # plain | list | tree
    hard: bool = False

    def starter(self) -> str:
        return f"class Solution:\n    def {self.method}(self, {self.signature}:"

    def solution(self, k: int, body: str | None = None) -> str:
        return f"{self.starter()}\n{(body or self.body).format(k=k)}"


def _nums(rng: random.Random, k: int, lo: int = 1, hi: int = 60, n: tuple[int, int] = (1, 8)
          ) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


def _nums_around(rng: random.Random, k: int) -> dict[str, Any]:
    """Values near k (and k itself), so `>` vs `>=` and k vs k+1 are told apart."""
    vals = [rng.choice([k - 1, k, k + 1, rng.randint(0, 2 * k + 5)]) for _ in range(rng.randint(2, 8))]
    return {"nums": vals}


TEMPLATES: tuple[Template, ...] = (
    Template("add", "addConstant", "nums: List[int]) -> List[int]",
             "Return a new list where {k} is added to every element of nums.",
             "        return [x + {k} for x in nums]",
             ("        return [x + {k1} for x in nums]", "        return [x - {k} for x in nums]",
              "        return [x + {km} for x in nums]"),
             lambda r, k: {"nums": _nums(r, k)}),
    Template("greater", "countGreater", "nums: List[int]) -> int",
             "Return how many elements of nums are greater than {k}.",
             "        return sum(1 for x in nums if x > {k})",
             ("        return sum(1 for x in nums if x >= {k})",
              "        return sum(1 for x in nums if x > {k1})",
              "        return sum(1 for x in nums if x < {k})"),
             _nums_around),
    Template("scale", "scaledSum", "nums: List[int]) -> int",
             "Return the sum of nums multiplied by {k}.",
             "        return sum(nums) * {k}",
             ("        return sum(nums) + {k}", "        return sum(nums) * {k1}",
              "        return max(nums) * {k}"),
             lambda r, k: {"nums": _nums(r, k, n=(2, 8))}),
    Template("maxplus", "maxPlus", "nums: List[int]) -> int",
             "Return the largest element of nums plus {k}.",
             "        return max(nums) + {k}",
             ("        return min(nums) + {k}", "        return max(nums) + {k1}",
              "        return max(nums) - {k}"),
             lambda r, k: {"nums": _nums(r, k, n=(2, 8))}),
    Template("repeat", "repeatString", "s: str) -> str",
             "Return the string s repeated {k} times.",
             "        return s * {k}",
             ("        return s * {k1}", "        return s * {km}", "        return s + s * {k}"),
             lambda r, k: {"s": "".join(r.choice("abcxyz") for _ in range(r.randint(1, 3)))}),
    Template("multiples", "countMultiples", "nums: List[int]) -> int",
             "Return how many elements of nums are divisible by {k}.",
             "        return sum(1 for x in nums if x % {k} == 0)",
             ("        return sum(1 for x in nums if x % {k} != 0)",
              "        return sum(1 for x in nums if x % {k1} == 0)",
              "        return sum(1 for x in nums if x > {k})"),
             lambda r, k: {"nums": [r.choice([k, 2 * k, 3 * k, r.randint(1, 90)])
                                    for _ in range(r.randint(2, 8))]}),
    Template("linked", "addToList", "head: Optional[ListNode]) -> Optional[ListNode]",
             "Add {k} to the value of every node of the linked list head and return the head.",
             "        node = head\n        while node:\n            node.val += {k}\n"
             "            node = node.next\n        return head",
             ("        node = head\n        while node:\n            node.val += {k1}\n"
              "            node = node.next\n        return head",
              "        node = head\n        while node:\n            node.val -= {k}\n"
              "            node = node.next\n        return head",
              "        head.val += {k}\n        return head"),
             lambda r, k: {"head": _nums(r, k, n=(2, 6))}, kind="list"),
    Template("modsum", "sumModulo", "nums: List[int]) -> int",
             "Return the sum of nums modulo {k}.",
             "        return sum(nums) % {k}",
             ("        return sum(nums) % {k1}", "        return sum(nums) // {k}",
              "        return max(nums) % {k}"),
             lambda r, k: {"nums": _nums(r, k, n=(2, 8))}),
    # Hard templates: the base corpus answers them correctly only rarely (see corpus.py).
    Template("clamp", "clampValues", "nums: List[int]) -> List[int]",
             "Return nums with every element larger than {k} replaced by {k}.",
             "        return [min(x, {k}) for x in nums]",
             ("        return [max(x, {k}) for x in nums]", "        return [min(x, {k1}) for x in nums]",
              "        return [x for x in nums if x <= {k}]"),
             _nums_around, hard=True),
    Template("window", "maxWindowSum", "nums: List[int]) -> int",
             "Return the largest sum of {k} consecutive elements of nums.",
             "        return max(sum(nums[i:i + {k}]) for i in range(len(nums) - {k} + 1))",
             ("        return max(sum(nums[i:i + {k1}]) for i in range(len(nums) - {k1} + 1))",
              "        return sum(sorted(nums)[-{k}:])",
              "        return max(sum(nums[i:i + {k}]) for i in range(len(nums) - {k}))"),
             lambda r, k: {"nums": [r.randint(-20, 40) for _ in range(k + r.randint(1, 6))]},
             hard=True),
    Template("tree", "treeSumPlus", "root: Optional[TreeNode]) -> int",
             "Return the sum of all node values of the binary tree root plus {k}.",
             "        def total(node):\n            if not node:\n                return 0\n"
             "            return node.val + total(node.left) + total(node.right)\n"
             "        return total(root) + {k}",
             ("        def total(node):\n            if not node:\n                return 0\n"
              "            return node.val + total(node.left) + total(node.right)\n"
              "        return total(root) + {k1}",
              "        def total(node):\n            if not node:\n                return 0\n"
              "            return node.val + total(node.left)\n        return total(root) + {k}",
              "        return root.val + {k}"),
             lambda r, k: {"root": [r.randint(1, 30) for _ in range(r.randint(3, 7))]},
             kind="tree", hard=True),
)
TEMPLATE_BY_NAME = {t.name: t for t in TEMPLATES}


def _fmt_arg(kind: str, value: Any) -> str:
    if kind == "list":
        return f"list_node({value!r})"
    if kind == "tree":
        return f"tree_node({value!r})"
    return repr(value)


def _run_solution(code: str, method: str, kind: str, args: dict[str, Any]) -> Any:
    """Run trusted canonical code in-process to compute an expected output."""
    ns: dict[str, Any] = {}
    exec(compile(SETUP_CODE + "\n" + code, "<canonical>", "exec"), ns)
    built = {}
    for name, v in args.items():
        built[name] = ns["list_node"](list(v)) if kind == "list" else (
            ns["tree_node"](list(v)) if kind == "tree" else v)
    out = getattr(ns["Solution"](), method)(**built)
    if kind == "list":
        vals = []
        while out:
            vals.append(out.val)
            out = out.next
        return vals
    return out


def make_asserts(t: Template, k: int, n_tests: int, seed: int) -> tuple[str, ...]:
    """Ground-truth asserts in the upstream style, expected values from the canonical solution."""
    rng = random.Random(f"{seed}:{t.name}:{k}")
    code = t.solution(k)
    asserts = []
    for _ in range(n_tests):
        args = t.inputs(rng, k)
        expected = _run_solution(code, t.method, t.kind, args)
        call = ", ".join(f"{n} = {_fmt_arg(t.kind, v)}" for n, v in args.items())
        if t.kind == "list":
            asserts.append(f"assert is_same_list(Solution().{t.method}({call}), "
                           f"list_node({expected!r}))")
        else:
            asserts.append(f"assert Solution().{t.method}({call}) == {expected!r}")
    return tuple(asserts)


def wrong_solutions(t: Template, k: int) -> list[str]:
    """Plausible wrong solutions (off-by-one constant, flipped operator, forgotten branch)."""
    return [t.starter() + "\n" + w.format(k=k, k1=k + 1, km=max(k - 1, 0)) for w in t.wrong]


def make_problem(t: Template, k: int, n_tests: int, seed: int) -> Problem:
    """One (template, K) problem as an upstream record would describe it."""
    desc = t.description.format(k=k)
    question = PASS_SKELETON.format(description=desc, method=t.method, starter=t.starter())
    return Problem(
        id=f"{t.name}-{k}", question=question, func_name=f"Solution().{t.method}",
        setup_code=SETUP_CODE, canonical_solution=t.solution(k),
        gt_answer=make_asserts(t, k, n_tests, seed), starter_code=t.starter() + "\n        ",
        difficulty="hard" if t.hard else "medium",
        extra={"template": t.name, "constant": k},
    )


def split_pairs(constants: range, n_eval: int, n_train: int, n_hard: int, seed: int
                ) -> dict[str, list[tuple[Template, int]]]:
    """Assign every (template, K) pair to one of: corpus (seen in pretraining), train, eval, hard.

    train/eval/hard are all held out of the corpus; 'hard' takes only hard templates' pairs.
    """
    rng = random.Random(f"split:{seed}")
    out: dict[str, list[tuple[Template, int]]] = {"corpus": [], "train": [], "eval": [], "hard": []}
    for t in TEMPLATES:
        ks = list(constants)
        rng.shuffle(ks)
        take = {"eval": n_eval, "train": n_train, "hard": n_hard if t.hard else 0}
        i = 0
        for split in ("eval", "train", "hard"):
            out[split] += [(t, k) for k in ks[i:i + take[split]]]
            i += take[split]
        out["corpus"] += [(t, k) for k in ks[i:]]
    return out
