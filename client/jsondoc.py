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
    "compose_into",
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
        text = _ENCODER.encode(value)
        if not text.isascii():
            # A lone surrogate passes the encoder but has no UTF-8 form.
            text.encode("utf-8")
        return text
    except (ValueError, TypeError) as error:
        found = _first_invalid(value, "")
        if found is None:
            raise
        path, bad, is_key = found
        where = f"member {path}" if path else "the value"
        if is_key:
            raise TypeError(
                f"{where} has the key {bad!r}, a {type(bad).__name__}; JSON keys "
                "are strings"
            ) from error
        if isinstance(bad, str):
            raise ValueError(
                f"{where} contains an unpaired surrogate such as \\ud800, which "
                "is not valid Unicode"
            ) from error
        if isinstance(bad, float):
            raise ValueError(
                f"{where} is {bad!r}: JSON, and so the state document, has no "
                "NaN or Infinity"
            ) from error
        raise TypeError(
            f"{where} is a {type(bad).__name__}, which JSON cannot hold; use a "
            "dict, list, str, int, float, bool or None"
        ) from error


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_invalid(value: Any, path: str) -> tuple[str, Any, bool] | None:
    """Return the path of the first value or key JSON cannot hold, the value
    or key, and whether it is a key."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value, False)
    if isinstance(value, str):
        return None if _encodable(value) else (path, value, False)
    if value is None or isinstance(value, int):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key is None or isinstance(key, (str, int, float))):
                return path, key, True
            key_text = key if _encodable(str(key)) else ascii(key)
            name = f"{path}.{key_text}" if path else str(key_text)
            if isinstance(key, str) and not _encodable(key):
                return name, key, False
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
    return path, value, False


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


def compose_into(first: JSONObject, second: JSONObject) -> bool:
    """Change ``first`` into the patch that ``compose_merge_patches`` returns.

    Returns False, changing nothing, when no single merge patch can do it.
    ``first`` then shares objects with ``second``, so both must belong to
    the caller alone. Unlike ``compose_merge_patches`` it copies nothing, so
    composing many small patches into one costs the size of each, not of
    the composition.
    """
    if not _composable(first, second):
        return False
    _compose_in_place(first, second)
    return True


def _composable(first: JSONObject, second: JSONObject) -> bool:
    for key, value in second.items():
        if isinstance(value, dict) and key in first:
            earlier = first[key]
            if not isinstance(earlier, dict) or not _composable(earlier, value):
                return False
    return True


def _compose_in_place(first: JSONObject, second: JSONObject) -> None:
    for key, value in second.items():
        if isinstance(value, dict) and key in first:
            _compose_in_place(first[key], value)
        else:
            first[key] = value


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
