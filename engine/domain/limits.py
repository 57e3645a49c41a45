"""Every limit on what a caller sends, in one place, and the checks that apply them.

The service checks each field here once, before anything is written: gallery ids, identity ids,
display names, attributes (size, keys, nesting), batch sizes and page sizes.  The database's own
column limits are never the check: on PostgreSQL an over-long value fails the whole transaction
(INTERNAL, and the gallery's writes are left uncertain), while SQLite stores it anyway.  Embeddings
are checked by the service against their gallery (dimension, model, unit length); photos by the
decoder (``DecodeConfig``) and by the server's message size.

This module imports nothing heavy (the standard library and the engine's errors), so a client or
a tool can apply the same limits before it sends anything.

Attributes are JSON.  Python's ``json`` recurses once per level, so text nested a thousand levels
deep makes it raise ``RecursionError`` (on the way in, or when a stored row is read back).  Nesting
is therefore measured on the raw text, without recursion, before it is parsed
(:func:`json_depth`), and rows already stored (by an older version that had no limit) are read
through :func:`read_stored_json`, which turns one it cannot read into empty attributes and a
warning in the log rather than an error that would stop the server from starting.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from typing import Any

from faceid.engine.domain.errors import InvalidInputError
from faceid.engine.domain.faces import Box

log = logging.getLogger("faceid.limits")

#: A gallery's id (the last part of ``galleries/{gallery}``).
MAX_GALLERY_ID = 128
#: An identity's id, the caller's external id.
MAX_IDENTITY_ID = 256
#: An identity's display name (may be empty).
MAX_DISPLAY_NAME = 256
#: An identity's attributes, as JSON text (UTF-8 bytes).
MAX_ATTRIBUTES_BYTES = 64 * 1024
#: Levels of nesting in the attributes: the object itself is level 1, ``{"a": {"b": 1}}`` has 2.
MAX_ATTRIBUTES_DEPTH = 32
#: Keys in the attributes, counted in every object at every level.
MAX_ATTRIBUTES_KEYS = 1_000
#: Stored attributes nested deeper than this (written before the limit above existed) read as
#: empty, with a warning: deeper text could make Python's ``json`` recurse past its limit.
MAX_STORED_DEPTH = 256
#: Items in one EnrollBatch call.
MAX_BATCH_ITEMS = 10_000
#: Probes in one IdentifyBatch call.  Past about 256 embeddings per search the index gains
#: little more per probe (BENCHMARKS.md "IdentifyBatch"); 1,024 leaves room for a caller's batch
#: and keeps a call's answer (up to 1,024 × top_k matches) in the tens of milliseconds to encode.
MAX_IDENTIFY_BATCH = 1_024
#: Identities in one page of ListIdentities.
MAX_PAGE_SIZE = 1_000

_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')  # one JSON string, escapes included (no recursion in re)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def check_text(field: str, value: str, limit: int, *, required: bool = True) -> None:
    """A text field: not empty (when ``required``), at most ``limit`` characters, no control
    characters (U+0000 … U+001F: PostgreSQL refuses NUL in text) and valid Unicode."""
    if required and not value.strip():
        raise InvalidInputError(f"{field} must not be empty")
    if len(value) > limit:
        raise InvalidInputError(
            f"{field} is {len(value):,} characters long; the limit is {limit}: send a shorter one"
        )
    if any(ord(c) < 32 for c in value):
        raise InvalidInputError(f"{field} must not contain control characters (tabs, newlines, NUL, …)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{field} is not valid Unicode (it holds a lone surrogate)") from None


#: A new gallery's id (the .proto's rule): ASCII letters, digits, '-', '_' and '.', so that it
#: sits in a resource name, a URL path, a metric label and a shell argument as it is.
GALLERY_ID = re.compile(r"[A-Za-z0-9_.-]+")


def check_gallery_id(value: str) -> None:
    """The id of a gallery being created.  Only at creation: a gallery made under an earlier,
    looser rule stays reachable by its name."""
    check_text("gallery_id", value, MAX_GALLERY_ID)
    if not GALLERY_ID.fullmatch(value):
        suggestion = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-")[:MAX_GALLERY_ID] or "staff"
        raise InvalidInputError(
            f"gallery_id {value!r} is not a valid gallery name: use 1 to {MAX_GALLERY_ID} ASCII letters, "
            f"digits, '-', '_' or '.' (e.g. {suggestion!r})"
        )


def check_identity_id(value: str) -> None:
    check_text("identity_id", value, MAX_IDENTITY_ID)


def check_display_name(value: str | None) -> None:
    """A display name; None (not given) and "" are both fine."""
    if value is not None:
        check_text("display_name", value, MAX_DISPLAY_NAME, required=False)


def check_batch_size(count: int) -> None:
    if not 1 <= count <= MAX_BATCH_ITEMS:
        raise InvalidInputError(
            f"items must hold 1 to {MAX_BATCH_ITEMS:,} requests; got {count:,} "
            "(split larger batches, or stream them with BulkEnroll)"
        )


def check_identify_batch(count: int, field: str = "probes") -> None:
    """The size of an IdentifyBatch's ``probes`` or a SearchFaces call's ``face_ids``."""
    if not 1 <= count <= MAX_IDENTIFY_BATCH:
        raise InvalidInputError(
            f"{field} must hold 1 to {MAX_IDENTIFY_BATCH:,} items; got {count:,} (split larger jobs into "
            f"several calls; several calls may be in flight at once)"
        )


def check_identity_prefix(prefix: str) -> None:
    """A clustering run's scope: a prefix of identity ids, as long as an identity id may be."""
    if len(prefix) > MAX_IDENTITY_ID:
        raise InvalidInputError(
            f"identity_prefix may hold at most {MAX_IDENTITY_ID} characters; got {len(prefix)}"
        )


def check_cluster_faces(count: int, most: int, least: int = 1) -> None:
    """The probes one ClusterFaces call sends (``least`` 1), or the faces they gave (0: every photo
    may have been without a face)."""
    if not least <= count <= most:
        raise InvalidInputError(
            f"a ClusterFaces call clusters 1 to {most:,} faces; got {count:,} (cluster a larger set by "
            f"enrolling it into a gallery and clustering the gallery)"
        )


def check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInputError(f"page_size must be between 1 and {MAX_PAGE_SIZE:,}; got {page_size}")


def check_face_box(box: Box, width: int, height: int, min_size: int) -> None:
    """A face box a caller gives: finite, inside the (upright) photo, at least ``min_size`` wide."""
    edges = (box.left, box.top, box.right, box.bottom)
    if not all(math.isfinite(v) for v in edges):
        raise InvalidInputError("the face box's edges must be finite numbers")
    inside = 0 <= box.left < box.right <= width and 0 <= box.top < box.bottom <= height
    if not inside:
        raise InvalidInputError(
            f"the face box (left {box.left:g}, top {box.top:g}, right {box.right:g}, bottom {box.bottom:g}) "
            f"must lie inside the photo, which is {width}×{height} pixels upright (after its EXIF "
            f"rotation), with left < right and top < bottom"
        )
    if box.width < max(min_size, 1) or box.height < max(min_size, 1):
        raise InvalidInputError(
            f"the face box is {box.width:g}×{box.height:g} pixels; a face must be at least {min_size} "
            f"pixels wide and high"
        )


def json_depth(text: str) -> int:
    """How deeply ``text`` nests JSON arrays and objects (0 for a scalar), measured without
    recursion; brackets inside strings do not count.  Strings go first and then everything but
    brackets (two regular expressions), and the deepest point is a running sum over the brackets
    left: a few passes over the text, in C, however it is built (400 KB: ~40 ms).  Malformed text
    gets a number that :func:`json.loads` then refuses anyway."""
    if "[" not in text and "{" not in text:
        return 0
    if '"' in text:
        text = _STRING.sub("", text)
    brackets = _NOT_BRACKET.sub("", text)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets), initial=0))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_attributes(text: str) -> dict[str, Any] | None:
    """Attributes sent as JSON text: None when empty, else a checked JSON object.  Size and
    nesting are measured on the text before it is parsed; keys after."""
    if not text:
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ATTRIBUTES_BYTES:
        raise InvalidInputError(
            f"attributes_json is {size:,} bytes long; the limit is {MAX_ATTRIBUTES_BYTES:,}: store large "
            "data elsewhere and keep a reference to it in the attributes"
        )
    depth = json_depth(text)
    if depth > MAX_ATTRIBUTES_DEPTH:
        raise InvalidInputError(
            f"attributes_json nests {depth:,} levels deep; the limit is {MAX_ATTRIBUTES_DEPTH} levels: "
            "send a flatter object"
        )
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidInputError("attributes_json is not valid JSON (NaN and Infinity are not JSON)") from None
    if not isinstance(value, dict):
        raise InvalidInputError('attributes_json must be a JSON object, such as {"team": "blue"}')
    check_attributes(value)
    return value


def check_attributes(attributes: dict[str, Any] | None) -> None:
    """Attributes given as a Python object: JSON values only, at most ``MAX_ATTRIBUTES_DEPTH``
    levels, ``MAX_ATTRIBUTES_KEYS`` keys and ``MAX_ATTRIBUTES_BYTES`` as JSON.  Walked with an
    explicit stack, never recursively, so any nesting is measured safely."""
    if attributes is None:
        return
    if not isinstance(attributes, dict):
        raise InvalidInputError("attributes must be a JSON object (a dict)")
    keys = 0
    stack: list[tuple[Any, int]] = [(attributes, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_ATTRIBUTES_DEPTH:
                raise InvalidInputError(
                    f"attributes nest more than {MAX_ATTRIBUTES_DEPTH} levels deep; the limit is "
                    f"{MAX_ATTRIBUTES_DEPTH} levels: send a flatter object"
                )
            if isinstance(value, dict):
                keys += len(value)
                if keys > MAX_ATTRIBUTES_KEYS:
                    raise InvalidInputError(
                        f"attributes hold more than {MAX_ATTRIBUTES_KEYS:,} keys; the limit is "
                        f"{MAX_ATTRIBUTES_KEYS:,} keys (all levels together)"
                    )
                for key in value:
                    if not isinstance(key, str):
                        raise InvalidInputError("attribute keys must be strings")
                    _check_string(key)
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            _check_string(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError("attributes must not hold NaN or infinite numbers (they are not JSON)")
        elif value is not None and not isinstance(value, bool | int | float):
            raise InvalidInputError(
                f"attributes must hold JSON values (strings, numbers, booleans, null, lists, objects); "
                f"got {type(value).__name__}"
            )
    size = len(json.dumps(attributes, separators=(",", ":")).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise InvalidInputError(
            f"attributes take {size:,} bytes as JSON; the limit is {MAX_ATTRIBUTES_BYTES:,}: store large "
            "data elsewhere and keep a reference to it in the attributes"
        )


def _check_string(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(
            "attributes hold a string that is not valid Unicode (a lone surrogate)"
        ) from None


def read_stored_json(raw: str | bytes) -> Any:
    """The database's JSON deserializer (every JSON column: attributes, the keys' galleries): the
    stored value, or ``{}`` (and a warning in the log) for one that cannot be read (nested past
    ``MAX_STORED_DEPTH``, or not JSON), so that no single row can stop the identity cache's
    warm-up, and with it the server's start."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray | memoryview) else raw
    problem = ""
    depth = json_depth(text)
    if depth > MAX_STORED_DEPTH:
        problem = f"nested {depth:,} levels deep"
    else:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            problem = f"not JSON ({type(exc).__name__})"
        else:
            return value  # (an identity's attributes are an object; the keys table keeps lists)
    log.warning(
        "identity attributes stored in the database could not be read (%s, %s bytes); the identity "
        "reads as having no attributes until UpdateIdentity sets them again",
        problem,
        f"{len(text):,}",
    )
    return {}
