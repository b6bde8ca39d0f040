"""The code that runs *inside* a sandboxed child, right before and around the untrusted program.

It executes `setup_code`, compiles and executes the program, then runs the job's steps in order,
stopping at the first exception as an upstream assert script would:

* value step: evaluate a trusted expression (an assert's left side, e.g. `Solution().f(n=7)`) and
  write its value to the channel in a restricted format: exact builtin types only (`type(x) is int`,
  ... checked, never `isinstance`), linked lists and trees as plain data. Any other object, e.g. one
  whose `__eq__` always returns True, cannot be encoded, so it fails.
* statement step: run a statement (the promised evaluator call, or an assert of an unusual shape)
  and write the job's nonce when it returns.

Nothing here decides a verdict: the expected values never reach this process, and the parent
compares. The untrusted program shares this process and can tamper with everything in it; that is
harmless for value steps (it would have to write the right answers, i.e. solve the problem) and
documented as residual risk for statement steps (see sandbox.py).
"""
from __future__ import annotations

import collections

import builtins
import json
import os
from types import CodeType
from typing import Any

_type, _len, _id = type, len, id
_SCALARS = (bool, int, float, str)
MAX_NODES = 1_000_000


class EncodeError(Exception):
    """The value is not made of allowed types (or is cyclic / too large)."""


def _node_fields(x: Any) -> dict:
    try:
        d = object.__getattribute__(x, "__dict__")
    except AttributeError:
        raise EncodeError("node without __dict__") from None
    if _type(d) is not dict:
        raise EncodeError("node __dict__ is not a dict")
    return d


def _encode_list_node(x: Any, depth: int) -> dict:
    vals, seen = [], set()
    while x is not None:
        if _type(x).__name__ != "ListNode" or _id(x) in seen or _len(vals) > MAX_NODES:
            raise EncodeError("malformed or cyclic linked list")
        seen.add(_id(x))
        d = _node_fields(x)
        vals.append(encode(d.get("val"), depth + 1))
        x = d.get("next")
    return {"ln": vals}


def _encode_tree(root: Any, depth: int) -> dict:
    out, queue, seen, head = [], [root], set(), 0
    while head < _len(queue):
        node = queue[head]
        head += 1
        if node is None:
            out.append(None)
            continue
        if _type(node).__name__ != "TreeNode" or _id(node) in seen or _len(seen) > MAX_NODES:
            raise EncodeError("malformed or cyclic tree")
        seen.add(_id(node))
        d = _node_fields(node)
        out.append(encode(d.get("val"), depth + 1))
        queue.append(d.get("left"))
        queue.append(d.get("right"))
    while out and out[-1] is None:
        out.pop()
    return {"tn": out}


# Exact classes captured before any graded code runs: a Counter or defaultdict answer equals a dict
# literal under upstream's `==`, so it is encoded as the dict it is.
_DICT_SUBCLASSES = (collections.Counter, collections.defaultdict, collections.OrderedDict)
_dict_items = dict.items


def encode(x: Any, depth: int = 0) -> Any:
    """Value -> JSON-able data, accepting only exact builtin types (plus ListNode/TreeNode)."""
    if depth > 500:
        raise EncodeError("value nested too deeply")
    t = _type(x)
    if x is None or t in _SCALARS:
        if t is int and not -(2 ** 53) < x < 2 ** 53:
            return {"big": hex(x)}
        return x
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple:
        return {"tuple": [encode(v, depth + 1) for v in x]}
    if t is set or t is frozenset:
        return {t.__name__: [encode(v, depth + 1) for v in x]}
    if t is dict or any(t is c for c in _DICT_SUBCLASSES):  # dict's own accessor: no overrides
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)]
                         for k, v in _dict_items(x)]}
    if t.__name__ == "ListNode":
        return _encode_list_node(x, depth)
    if t.__name__ == "TreeNode":
        return _encode_tree(x, depth)
    raise EncodeError(f"type {t.__name__} is not allowed in answers")


def _err(e: BaseException) -> str:
    try:
        return str(_type(e).__name__)[:80]
    except Exception:  # noqa: BLE001 - a hostile exception class
        return "Exception"


def compile_setup(src: str) -> CodeType:
    """Compile the trusted setup code exactly as the child would (same module, same flags)."""
    return compile(src, "<setup>", "exec")


def run_job(job: dict, chan: int, setup: CodeType | None = None) -> None:
    """Run setup, program and steps; one JSON line per event on fd `chan`.

    `setup`: `job["setup"]` already compiled (by the zygote, once per worker, inherited on fork).
    """
    write, dumps = os.write, json.dumps

    def send(rec: dict) -> None:
        data = memoryview((dumps(rec) + "\n").encode())
        while data:
            data = data[write(chan, data):]

    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    if setup is None:
        setup = compile_setup(job["setup"])
    exec(setup, ns)  # trusted; failure = harness bug
    steps = []
    try:
        program = compile(job["program"], "<solution>", "exec")
        for s in job["steps"]:
            steps.append(compile(s["code"], "<test>", "eval" if s["kind"] == "value" else "exec"))
    except BaseException as e:  # noqa: BLE001 - SyntaxError, RecursionError, MemoryError ...
        send({"k": "compile", "e": _err(e)})
        return
    send({"k": "ready"})  # written before any untrusted code runs
    try:
        exec(program, ns)
    except BaseException as e:  # noqa: BLE001 - includes SystemExit: exiting early is failure
        send({"k": "exec", "e": _err(e)})
        return
    nonce = job["nonce"]
    for i, (spec, code) in enumerate(zip(job["steps"], steps)):
        try:
            if spec["kind"] == "value":
                send({"i": i, "v": encode(eval(code, ns))})
            else:
                exec(code, ns)
                send({"i": i, "ok": nonce})
        except BaseException as e:  # noqa: BLE001
            send({"i": i, "e": _err(e)})
            return
    send({"k": "done"})
