"""Static parsing in the parent: code blocks, evaluator detection, assert splitting, wire values."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.env.parse import (Check, NodeList, NodeTree, WireError, decode_value, extract_code,
                             find_evaluator, split_assert, tree_level)
from probe.env.runner import EncodeError, encode

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("completion, code", [
    ("no code here", None),
    ("", None),
    ("```python\nx = 1\n```", "x = 1\n"),
    ("a\n```python\nx = 1\n```\nb\n```\ny = 2\n```\n", "x = 1\ny = 2\n"),
    ("```python\nx = 1\n```\n```python\ny = 2", "x = 1\ny = 2\n"),  # unterminated last block
    ("```bash\nrm -rf /\n```", None),  # other languages are not code
    ("```Python3 \nx = 1\n```", "x = 1\n"),
])
def test_extract_code(completion: str, code: str | None) -> None:
    assert extract_code(completion) == code


def test_extract_code_non_string() -> None:
    assert extract_code(None) is None  # type: ignore[arg-type]


def test_find_evaluator_top_level_and_method() -> None:
    ev = find_evaluator("import os\ndef run_tests():\n    assert True\n", "run_tests")
    assert ev is not None and not ev.is_method and "import os" in ev.source
    code = "class Solution:\n    def f(self):\n        return 1\n    def verify_answer(self):\n        pass\n"
    ev = find_evaluator(code, "verify_answer")
    assert ev is not None and ev.is_method and ev.source.strip().startswith("def verify_answer")
    assert find_evaluator(code, "run_tests") is None
    assert find_evaluator("def run_tests(:\n", "run_tests") is None  # syntax error


def test_main_guard_counts_as_not_defined() -> None:
    code = "def run_tests():\n    if __name__ == '__main__':\n        pass\n"
    assert find_evaluator(code, "run_tests") is None


def test_split_assert_value_checks() -> None:
    c = split_assert("assert Solution().f(n = 7, q = [[0,5]]) == [2, 2, 2]")
    assert c == Check("value", "Solution().f(n=7, q=[[0, 5]])", [2, 2, 2])
    assert split_assert("assert Solution().f(x = 1) == -inf").expected == -math.inf
    c = split_assert("assert is_same_list(Solution().r(head = list_node([1, 2])), list_node([2, 1]))")
    assert c.kind == "value" and c.expected == NodeList((2, 1)) and "list_node([1, 2])" in c.expr
    c = split_assert("assert is_same_tree(Solution().t(root = tree_node([1])), tree_node([1, None, 2]))")
    assert c.expected == NodeTree((1, None, 2))
    assert split_assert("assert is_same_list(Solution().r(h = None), list_node([]))").expected is None


@pytest.mark.parametrize("src", [
    "assert Solution().f(1) == Solution().g(2)",   # no literal side
    "assert Solution().f(1) == list_node([1])",    # identity compare upstream: keep as statement
    "assert Solution().f(1) < 3",
    "assert Solution().f(",                         # unparseable
])
def test_split_assert_falls_back_to_statement(src: str) -> None:
    assert split_assert(src) == Check("stmt", src)


def test_tree_level_matches_tree_node_semantics() -> None:
    assert tree_level([1, None, 2, 3]) == (1, None, 2, 3)
    assert tree_level([1, 2, 3, None, None, None, None]) == (1, 2, 3)
    assert tree_level([]) == ()


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.tuples(kids, kids)
    | st.dictionaries(st.integers() | st.text(), kids, max_size=3)
    | st.frozensets(st.integers(), max_size=3),
    max_leaves=20)


@given(plain)
def test_encode_decode_round_trip(value: object) -> None:
    wire = json.loads(json.dumps(encode(value)))
    assert decode_value(wire) == value


@pytest.mark.parametrize("value", [object(), type("E", (), {"__eq__": lambda s, o: True})(),
                                   type("L", (list,), {})([1]), b"bytes"])
def test_encode_refuses_non_builtin_types(value: object) -> None:
    with pytest.raises(EncodeError):
        encode(value)


@pytest.mark.parametrize("wire", [{"x": 1}, {"tuple": 1}, {"set": [[1]]}, {"big": "zz"},
                                  {"a": 1, "b": 2}])
def test_decode_rejects_malformed_wire(wire: object) -> None:
    with pytest.raises(WireError):
        decode_value(wire)
