"""State documents: strict JSON parsing, merge patches and the state file rules.

A document is stored as compact JSON text written by ``dump``. Python's json
keeps integers as arbitrary-precision ints and writes floats with the shortest
repr that reads back the same, so 9007199254740993 stays that integer, 3 stays
3, 3.0 stays 3.0, and strings keep every character.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
from collections.abc import Iterator
from typing import Any, TypeAlias

from editstore.server.errors import InvalidArgument, ResourceExhausted

# Python refuses to convert longer digit strings to int, as a guard against
# quadratic conversion time; such integers are rejected with a clear message.
MAX_INTEGER_DIGITS = 4300
# Texts from this size on are parsed with the garbage collector paused
# (``collection_paused``); smaller ones allocate too few objects for a
# pause to matter.
GC_PAUSE_BYTES = 64 * 1024

STRING_FIELDS = (
    "session_id",
    "current_stage",
    "image_path",
    "naive_prompt",
    "edited_image_path",
)
OBJECT_FIELDS = ("scene_analysis", "intent", "prompts", "validation")


class _Rejected(Exception):
    """A JSON value the store does not accept; parse_object names the field."""


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"must not contain {name}: JSON has no such value")


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Rejected(
            f"contains the number {literal}, which is too large for a 64-bit float"
        )
    if value == 0:
        mantissa = literal.lower().partition("e")[0]
        if any(digit in mantissa for digit in "123456789"):
            raise _Rejected(
                f"contains the number {literal}, which is too small for a 64-bit "
                "float and would read back as 0"
            )
    return value


def _parse_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise _Rejected(
            f"contains an integer of {digits} digits; at most "
            f"{MAX_INTEGER_DIGITS} are accepted"
        )
    return int(literal)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Rejected(f"has the key {key!r} twice in one object")
            seen.add(key)
    return result


# One decoder and one encoder for every call: building them costs more than
# parsing or writing a small patch.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant,
    parse_float=_parse_float,
    parse_int=_parse_int,
    object_pairs_hook=_unique_keys,
)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# JSONEncoder.encode builds a new C encoder on every call, which cost about
# half of the time of encoding a small patch. This one is built once, with
# the same settings. It skips the check for circular references: parsed JSON
# has none, and nesting too deep still raises RecursionError.
_MAKE_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (
    None
    if _MAKE_C_ENCODER is None
    else _MAKE_C_ENCODER(
        None,
        _ENCODER.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
)


def _encode(value: Any) -> str:
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    chunks: tuple[str, ...] = _C_ENCODER(value, 0)
    return "".join(chunks)


@contextlib.contextmanager
def collection_paused(size: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large text is parsed.

    Parsing allocates an object for every JSON value, and those allocations
    trigger collections that walk the growing document again and again.
    With 300,000 objects alive, a 4 MB document parsed in 249 to 406 ms
    with collection and 123 to 183 ms without. Parsed JSON holds no
    reference cycles, so the pause leaves no garbage of its own behind.
    """
    if size < GC_PAUSE_BYTES or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def parse_object(text: str, field: str) -> dict[str, Any]:
    """Parse JSON text that must be an object.

    Raises:
        InvalidArgument: the text is not valid JSON, not an object, contains
            NaN, Infinity, a duplicate key or an over-long integer.
    """
    try:
        if len(text) < GC_PAUSE_BYTES:
            # Most texts are small patches: skipping the context manager
            # saves 0.8 of the 2.8 us such a parse takes.
            value = _DECODER.decode(text)
        else:
            with collection_paused(len(text)):
                value = _DECODER.decode(text)
    except _Rejected as error:
        raise InvalidArgument(f"{field} {error}") from None
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            f"{field} is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}"
        ) from None
    except RecursionError:
        raise InvalidArgument(f"{field} is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object, got {_kind(value)}")
    return value


def dump(document: dict[str, Any], field: str = "document_json") -> str:
    """Serialize a document as compact JSON in its stored form.

    Raises:
        InvalidArgument: a string holds an unpaired surrogate, which has no
            UTF-8 form.
    """
    try:
        text = _encode(document)
    except RecursionError:
        raise InvalidArgument(f"{field} is nested too deeply") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{field} contains an unpaired surrogate escape such as \\ud800, "
            "which is not valid Unicode"
        ) from None
    return text


Fragments: TypeAlias = dict[str, tuple[Any, str]]
"""Each top-level member of a document: its value and that value's JSON text."""


def dump_reusing(
    document: dict[str, Any], previous: Fragments | None
) -> tuple[str, Fragments]:
    """Serialize a document as ``dump`` does, reusing the text of unchanged members.

    ``previous`` contains the members of an earlier document and their text. A
    merge patch builds new values only where it changes something and keeps
    the other values as the same objects, so a member whose value is the
    very object serialized before keeps its text. Holding the value in
    ``previous`` keeps it alive, so no other object can take its identity.
    Returns the text and the members of ``document`` for the next call.
    """
    fragments: Fragments = {}
    parts = []
    for key, value in document.items():
        known = previous.get(key) if previous is not None else None
        if known is not None and known[0] is value:
            part = known[1]
        else:
            part = dump({key: value})[1:-1]
        fragments[key] = (value, part)
        parts.append(part)
    return "{" + ",".join(parts) + "}", fragments


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386) and return the result.

    Members of the patch replace those of the target, null removes a member,
    and objects merge recursively. The target is not changed.
    """
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_size(text: str, limit: int) -> int:
    """Return the size of stored text in bytes, or raise if over the limit."""
    size = len(text.encode("utf-8"))
    if size > limit:
        raise ResourceExhausted(
            f"state document is {size} bytes as compact JSON, over the limit "
            f"of {limit} bytes (--max-document-bytes)"
        )
    return size


def check_state_fields(document: dict[str, Any], session_id: str) -> None:
    """Check the fields of the state file that the specification names.

    Raises:
        InvalidArgument: naming the first field of the wrong type or value.
    """
    for name in STRING_FIELDS:
        if name in document and not isinstance(document[name], str):
            raise InvalidArgument(
                f"state field {name} must be a string, got {_kind(document[name])}"
            )
    if "session_id" in document and document["session_id"] != session_id:
        raise InvalidArgument(
            f"state field session_id must be the session's id {session_id!r}, "
            f"got {document['session_id']!r}"
        )
    for name in OBJECT_FIELDS:
        if name in document and not isinstance(document[name], dict):
            raise InvalidArgument(
                f"state field {name} must be an object, got {_kind(document[name])}"
            )
    intent = document.get("intent", {})
    if "confidence" in intent:
        confidence = intent["confidence"]
        if not _is_number(confidence) or not 0 <= confidence <= 1:
            raise InvalidArgument(
                "state field intent.confidence must be a number between 0 and 1, "
                f"got {confidence!r}"
            )
    if "target_entities" in intent:
        targets = intent["target_entities"]
        if not isinstance(targets, list) or not all(
            isinstance(item, str) for item in targets
        ):
            raise InvalidArgument(
                "state field intent.target_entities must be an array of strings"
            )
    validation = document.get("validation", {})
    if "score" in validation and not _is_number(validation["score"]):
        raise InvalidArgument(
            "state field validation.score must be a number, "
            f"got {_kind(validation['score'])}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")
