"""Static (never executing) analysis of completions and ground-truth asserts, done in the trusted parent.

* `extract_code`: facts.md §3 parsing — every ```python (or bare ```) block, concatenated; an
  unterminated final block counts; no block -> None (not formatted).
* `find_evaluator`: whether a response defines the promised evaluator (top-level function or a
  method of `Solution`), and its source, so it can be attached to the canonical and to an arbitrary
  solution. A definition containing `if __name__ == '__main__':` counts as not defined (upstream rule).
* `split_assert`: turns a ground-truth assert into a *value check* — the expression whose value the
  sandbox must report, plus the expected value, which stays in the parent and is never sent to the
  sandbox. Asserts of another shape become *statement checks* (run in the sandbox, weaker; see
  sandbox.py).
* `decode_value`: wire format -> plain Python data. Wire data comes from untrusted code and is only
  ever treated as data.
"""
from __future__ import annotations

import ast
import math
import re
import textwrap
from dataclasses import dataclass
from typing import Any

FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
MAX_PARSE_CHARS = 200_000  # larger programs are not parsed in the parent (parser recursion/time)


def extract_code(completion: str) -> str | None:
    """Concatenate all ```python / bare ``` blocks (an unterminated last block counts); None if none."""
    if not isinstance(completion, str) or "```" not in completion:
        return None
    blocks = [body for lang, body in FENCE_RE.findall(completion)
              if lang.lower() in ("", "python", "python3", "py")]
    if not blocks:
        return None
    return "\n".join(b.rstrip("\n") for b in blocks) + "\n"


def safe_parse(code: str) -> ast.Module | None:
    """ast.parse that never raises (syntax errors, null bytes, recursion, oversize -> None)."""
    if len(code) > MAX_PARSE_CHARS:
        return None
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


def _has_main_guard(fn: ast.AST) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            consts = [n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)]
            if "__name__" in names and "__main__" in consts:
                return True
    return False


@dataclass(frozen=True)
class EvaluatorDef:
    """The response's evaluator: `is_method` when defined inside `class Solution`."""

    name: str
    is_method: bool
    source: str  # dedented `def` (with decorators) plus the response's top-level imports


def _last_def(tree: ast.Module, name: str) -> tuple[ast.AST, bool] | None:
    """The last definition of `name` at top level or in `class Solution` (node, is_method)."""
    found: tuple[ast.AST, bool] | None = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            found = (node, False)
        elif isinstance(node, ast.ClassDef) and node.name == "Solution":
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name == name:
                    found = (sub, True)
    return found


def evaluator_is_guarded(code: str, name: str, tree: ast.Module | None = None) -> bool:
    """The response defines `name`, but behind `if __name__ == '__main__':` (facts §3: such an
    evaluator counts as not defined, so the hinted call must fail, not run the guarded body).
    `tree`: `safe_parse(code)` when the caller already has it (parse each completion once)."""
    tree = safe_parse(code) if tree is None else tree
    if tree is None or not name:
        return False
    found = _last_def(tree, name)
    return found is not None and _has_main_guard(found[0])


def find_evaluator(code: str, name: str, tree: ast.Module | None = None) -> EvaluatorDef | None:
    """The last definition of `name` at top level or in `class Solution` (None if absent).
    `tree`: `safe_parse(code)` when the caller already has it."""
    tree = safe_parse(code) if tree is None else tree
    if tree is None or not name:
        return None
    found = _last_def(tree, name)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    if found is None or _has_main_guard(found[0]):
        return None
    node, is_method = found
    lines = code.splitlines()
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    src = textwrap.dedent("\n".join(lines[start - 1:node.end_lineno]))
    imps = "\n".join(ast.get_source_segment(code, i) or "" for i in imports)
    return EvaluatorDef(name=name, is_method=is_method, source=(imps + "\n" + src).strip() + "\n")


# ----- ground-truth asserts -------------------------------------------------------------------

@dataclass(frozen=True)
class NodeList:
    """A linked list as data (what `list_node(vals)` builds; `is_same_list` compares these)."""

    vals: tuple


@dataclass(frozen=True)
class NodeTree:
    """A binary tree as data: LeetCode level order with None holes, trailing Nones stripped."""

    level: tuple


@dataclass(frozen=True)
class Check:
    """One ground-truth assert. `expr` is sent to the sandbox; `expected` never is.

    kind "value": the sandbox reports the value of `expr`, the parent compares it to `expected`.
    kind "stmt": `expr` is a whole statement run in the sandbox (fallback; see sandbox.py).
    """

    kind: str
    expr: str
    expected: Any = None


class _NotLiteral(Exception):
    pass


def _literal(node: ast.AST) -> Any:
    """ast.literal_eval plus `inf`, `-inf`, `float('inf'/'nan')`, list_node(...), tree_node(...)."""
    if isinstance(node, ast.Name) and node.id == "inf":
        return math.inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if type(v) not in (int, float):
            raise _NotLiteral
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords \
            and len(node.args) == 1:
        fname = node.func.id
        if fname == "float" and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            return float(node.args[0].value)
        if fname in ("list_node", "tree_node"):
            vals = _literal(node.args[0])
            if not isinstance(vals, list):
                raise _NotLiteral
            if not vals:
                return None
            return NodeList(tuple(vals)) if fname == "list_node" else NodeTree(tree_level(vals))
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotLiteral
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Constant) and not isinstance(node.value, (bytes, type(...))):
        return node.value
    raise _NotLiteral


def tree_level(values: list) -> tuple:
    """Canonical level order of the tree `tree_node(values)` builds (same algorithm, as data)."""
    if not values or values[0] is None:
        return ()
    nodes: list[list] = [[values[0], None, None]]
    queue, i = [nodes[0]], 1
    while queue:
        node = queue.pop(0)
        for side in (1, 2):
            if i < len(values) and values[i] is not None:
                child = [values[i], None, None]
                node[side] = child
                queue.append(child)
            i += 1
    out: list = []
    queue = [nodes[0]]
    while queue:
        node = queue.pop(0)
        if node is None:
            out.append(None)
            continue
        out.append(node[0])
        queue.extend([node[1], node[2]])
    while out and out[-1] is None:
        out.pop()
    return tuple(out)


def split_assert(src: str) -> Check:
    """`assert E == LIT` / `assert is_same_list(E, list_node(LIT))` / ... -> value check."""
    tree = safe_parse(src.strip())
    if tree is not None and len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
        test = tree.body[0].test
        pair: tuple[ast.AST, ast.AST] | None = None
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            pair = (test.left, test.comparators[0])
        elif isinstance(test, ast.Call) and isinstance(test.func, ast.Name) \
                and test.func.id in ("is_same_list", "is_same_tree") and len(test.args) == 2 \
                and not test.keywords:
            pair = (test.args[0], test.args[1])
        if pair is not None:
            for expr, lit in (pair, pair[::-1]):
                try:
                    expected = _literal(lit)
                except (_NotLiteral, ValueError, TypeError, RecursionError):
                    continue
                is_node = isinstance(expected, (NodeList, NodeTree))
                if isinstance(test, ast.Compare) and is_node:
                    break  # `obj == list_node(..)` is identity upstream: keep upstream semantics
                return Check("value", ast.unparse(expr), expected)
    return Check("stmt", src)


# ----- wire values ----------------------------------------------------------------------------

class WireError(ValueError):
    """Malformed value data from the sandbox."""


def decode_value(w: Any, depth: int = 0) -> Any:
    """Inverse of runner.encode: JSON data -> value. Anything unexpected raises WireError."""
    if depth > 1000:
        raise WireError("too deep")
    if w is None or type(w) in (bool, int, float, str):
        return w
    if type(w) is list:
        return [decode_value(x, depth + 1) for x in w]
    if type(w) is dict and len(w) == 1:
        (tag, body), = w.items()
        try:
            if tag == "big":
                return int(body, 16)
            if tag == "tuple":
                return tuple(decode_value(x, depth + 1) for x in body)
            if tag in ("set", "frozenset"):
                s = {decode_value(x, depth + 1) for x in body}
                return s if tag == "set" else frozenset(s)
            if tag == "dict":
                return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in body}
            if tag == "ln":
                return NodeList(tuple(decode_value(x, depth + 1) for x in body))
            if tag == "tn":
                return NodeTree(tuple(decode_value(x, depth + 1) for x in body))
        except (TypeError, ValueError) as e:
            raise WireError(f"bad {tag!r} payload: {e}") from None
    raise WireError(f"unexpected wire value of type {type(w).__name__}")


def values_equal(actual: Any, expected: Any) -> bool:
    """`==` between two parent-built plain values (never untrusted objects)."""
    try:
        return bool(actual == expected)
    except RecursionError:
        return False
