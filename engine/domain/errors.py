"""Typed errors of the engine.

Each says what is wrong and what to do about it, in words a caller can act on;
the gRPC layer maps each class to a status code (``InvalidInputError`` →
INVALID_ARGUMENT, and so on) and never shows a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

T = TypeVar("T")


class FaceIdError(Exception):
    """Base class of every error the engine raises on purpose."""


def all_or_first_error(results: Sequence[T | FaceIdError]) -> list[T]:
    """Per-item results (a batch where each item fails alone) as a plain list, for a caller that
    fails whole: the first item's error is raised."""
    for r in results:
        if isinstance(r, FaceIdError):
            raise r
    return cast(list[T], list(results))


class InvalidInputError(FaceIdError):
    """The request itself is wrong: a bad photo, a bad embedding, a bad field."""


class InvalidImageError(InvalidInputError):
    """The bytes are not a photo we can decode (empty, not an image, truncated, corrupt)."""


class ImageTooLargeError(InvalidImageError):
    """The photo's header declares more pixels than the configured limit (decompression bomb guard)."""


class ModelError(FaceIdError):
    """The embedding model's weights are missing or do not match the network: a fault of the
    server (its installation), not of the request; the gRPC layer answers INTERNAL."""


class NotFoundError(FaceIdError):
    """The gallery, identity or face named in the request does not exist."""


class AlreadyExistsError(FaceIdError):
    """The gallery to create already exists."""


class FailedPreconditionError(FaceIdError):
    """The request is well-formed but cannot apply to this state (e.g. an embedding of another model)."""


class UnavailableError(FaceIdError):
    """A dependency (the database) is unreachable; the call can be retried."""


class DeadlineExceededError(FaceIdError):
    """The call was cancelled, or too little of its deadline was left, before its write was
    committed: nothing was written, and the call can be sent again."""
