"""JSON text of state documents, and JSON merge patches (RFC 7386).

The daemon stores documents as JSON text so that integers of any size and
strings round-trip exactly. This module writes that text the same way
everywhere (UTF-8 kept as is, NaN and Infinity rejected) and parses it with
integers kept as Python ``int``.

Merge patches are composed here too. Applying ``compose_merge_patches(a, b)``
to a document gives the same result as applying ``a`` and then ``b``, which
lets the state writer send many updates as one patch.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "apply_merge_patch",
    "compose_merge_patches",
    "dumps",
    "loads",
    "loads_object",
]

JSONObject = dict[str, Any]

# Built once: json.dumps with non-default arguments builds an encoder on
# every call, which costs more than encoding a small patch.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    """Serialise a value as compact JSON text.

    Raises:
        ValueError: The value contains NaN or Infinity; the message names
            the member, such as ``scores.alignment``.
        TypeError: The value contains something JSON has no type for; the
            message names the member and the type.
    """
    try:
        return _ENCODER.encode(value)
    except (ValueError, TypeError) as error:
        found = _first_invalid(value, "")
        if found is None:
            raise
        path, bad = found
        where = f"member {path}" if path else "the value"
        if isinstance(bad, float):
            raise ValueError(
                f"{where} is {bad!r}: JSON, and so the state document, has no "
                "NaN or Infinity"
            ) from error
        raise TypeError(
            f"{where} is a {type(bad).__name__}, which JSON cannot hold; use a "
            "dict, list, str, int, float, bool or None"
        ) from error


def _first_invalid(value: Any, path: str) -> tuple[str, Any] | None:
    """Return the path and value of the first value JSON cannot hold."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if value is None or isinstance(value, (str, int)):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if not (key is None or isinstance(key, (str, int, float))):
                return name, key
            found = _first_invalid(item, name)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _first_invalid(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return path, value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON text contains {name}, which state documents reject")


def loads(text: str | bytes) -> Any:
    """Parse JSON text, keeping integers as ``int`` and rejecting NaN."""
    return json.loads(text, parse_constant=_reject_constant)


def loads_object(text: str | bytes) -> JSONObject:
    """Parse JSON text that must be an object.

    Raises:
        ValueError: The text is not valid JSON or not an object.
    """
    value = loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Return ``target`` with ``patch`` applied as RFC 7386 defines it.

    Neither argument is changed; the result shares unchanged subtrees with
    them.
    """
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def compose_merge_patches(first: JSONObject, second: JSONObject) -> JSONObject | None:
    """Return one merge patch that does what ``first`` then ``second`` do.

    A null in ``second`` stays a null in the result, so the member is still
    removed from the document.

    Returns ``None`` when no single merge patch can do it. That happens when
    ``first`` sets a member to null or to a non-object and ``second`` then
    sets an object there. Applied in turn, they replace the member with that
    object. One patch containing the object would instead merge it into the
    member the document had before.

    Neither argument is changed.
    """
    result = dict(first)
    for key, value in second.items():
        if not isinstance(value, dict) or key not in first:
            result[key] = value
            continue
        earlier = first[key]
        if not isinstance(earlier, dict):
            return None
        composed = compose_merge_patches(earlier, value)
        if composed is None:
            return None
        result[key] = composed
    return result
