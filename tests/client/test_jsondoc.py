"""Merge patch composition and the JSON text of state documents."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest

from editstore.client import jsondoc

pytestmark = pytest.mark.timeout(30)

DOCUMENTS: list[dict[str, Any]] = [
    {},
    {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"},
    {"a": {"b": {"c": 1}}, "z": None},
    {"current_stage": "analysis", "intent": {"confidence": 0.5, "edit_type": "style"}},
]

PATCHES: list[dict[str, Any]] = [
    {},
    {"a": None},
    {"a": 5},
    {"a": {"x": 1}},
    {"a": {"b": None}},
    {"a": {"b": {"c": None, "d": 4}}},
    {"b": {"c": None}},
    {"b": [3]},
    {"b": None, "e": "y"},
    {"intent": {"confidence": 0.9}, "current_stage": "intent"},
    {"new": {"deep": {"er": None, "k": 1}}},
]


def test_apply_merge_patch_follows_rfc_7386_examples() -> None:
    # The examples of RFC 7386, appendix A.
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert jsondoc.apply_merge_patch(target, patch) == expected


def test_compose_equals_applying_in_turn() -> None:
    for first, second in itertools.product(PATCHES, repeat=2):
        composed = jsondoc.compose_merge_patches(first, second)
        if composed is None:
            continue
        for document in DOCUMENTS:
            in_turn = jsondoc.apply_merge_patch(
                jsondoc.apply_merge_patch(document, first), second
            )
            at_once = jsondoc.apply_merge_patch(document, composed)
            assert at_once == in_turn, (document, first, second, composed)


def test_compose_keeps_null_of_second_patch() -> None:
    composed = jsondoc.compose_merge_patches({"a": 1, "b": {"c": 1}}, {"a": None})
    assert composed == {"a": None, "b": {"c": 1}}
    nested = jsondoc.compose_merge_patches({"b": {"c": 1}}, {"b": {"c": None}})
    assert nested == {"b": {"c": None}}


def test_compose_later_value_replaces_earlier() -> None:
    composed = jsondoc.compose_merge_patches(
        {"current_stage": "analysis", "k1": 1}, {"current_stage": "intent", "k2": 2}
    )
    assert composed == {"current_stage": "intent", "k1": 1, "k2": 2}


def test_compose_object_after_null_is_not_one_patch() -> None:
    # {"a": null} then {"a": {"x": 1}} replaces "a" by {"x": 1}; one patch
    # holding {"a": {"x": 1}} would merge into the old "a" instead.
    assert jsondoc.compose_merge_patches({"a": None}, {"a": {"x": 1}}) is None
    assert jsondoc.compose_merge_patches({"a": 3}, {"a": {"x": 1}}) is None
    assert jsondoc.compose_merge_patches({"a": {"b": None}}, {"a": {"b": {}}}) is None


def test_compose_leaves_arguments_unchanged() -> None:
    first = {"a": {"b": 1}}
    second = {"a": {"c": 2}}
    jsondoc.compose_merge_patches(first, second)
    assert first == {"a": {"b": 1}}
    assert second == {"a": {"c": 2}}


def test_compose_into_matches_compose() -> None:
    for first, second in itertools.product(PATCHES, repeat=2):
        expected = jsondoc.compose_merge_patches(first, second)
        owned = copy.deepcopy(first)

        composed = jsondoc.compose_into(owned, copy.deepcopy(second))

        assert composed == (expected is not None), (first, second)
        assert owned == (first if expected is None else expected), (first, second)


def test_dumps_names_invalid_member() -> None:
    cases: list[tuple[Any, type[Exception], str]] = [
        ({"a": {"b": [1, math.inf]}}, ValueError, "member a.b[1] is inf"),
        ({"tags": {"sky"}}, TypeError, "member tags is a set"),
        ({"k": "\ud800"}, ValueError, "member k contains an unpaired surrogate"),
        ({"a": {("t",): 1}}, TypeError, "member a has the key ('t',), a tuple"),
        (math.nan, ValueError, "the value is nan"),
    ]
    for value, error_class, message in cases:
        with pytest.raises(error_class) as raised:
            jsondoc.dumps(value)
        assert message in str(raised.value)


def test_dumps_keeps_unicode_and_rejects_nan() -> None:
    assert jsondoc.dumps({"sky": "ciel étoilé ✨"}) == '{"sky": "ciel étoilé ✨"}'
    with pytest.raises(ValueError):
        jsondoc.dumps({"score": math.nan})
    with pytest.raises(ValueError):
        jsondoc.dumps({"score": math.inf})


def test_loads_keeps_big_integers_exact() -> None:
    value = jsondoc.loads_object('{"n": 9007199254740993, "f": 3.0, "i": 3}')
    assert value["n"] == 9007199254740993
    assert isinstance(value["i"], int)
    assert isinstance(value["f"], float)


def test_loads_rejects_nan_and_non_objects() -> None:
    with pytest.raises(ValueError):
        jsondoc.loads('{"a": NaN}')
    with pytest.raises(ValueError):
        jsondoc.loads_object("[1, 2]")
