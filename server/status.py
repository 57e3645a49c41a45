"""The status code and message a caller sees for an exception: every domain error becomes its
code with the domain's message; anything unexpected becomes INTERNAL with a reference to the log
line, never a traceback.  Biometric data (photos, embeddings) is never logged."""

from __future__ import annotations

import logging
import uuid

import grpc

from faceid.engine.domain.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FaceIdError,
    FailedPreconditionError,
    InvalidInputError,
    ModelError,
    NotFoundError,
    UnavailableError,
)

log = logging.getLogger("faceid.server")

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
]
#: Server faults logged once (by kind), not at every call they fail.
_LOGGED: set[str] = set()


MAX_MESSAGE = 1000  # characters: a message travels in HTTP/2 trailers, which gRPC caps at 16 KiB


def shorten(message: str) -> str:
    """A message that echoes a huge field is cut, so that it still reaches the caller."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for an exception."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, shorten(str(exc))
    if isinstance(exc, ModelError):  # the server's installation, not the request
        if "model" not in _LOGGED:
            _LOGGED.add("model")
            log.error(
                "the face model cannot be loaded: calls that need it (photos) get INTERNAL until the "
                "model files are fixed and the server is restarted: %s",
                exc,
                exc_info=exc,
            )
        return grpc.StatusCode.INTERNAL, (
            "the server's face model files are missing or damaged: a fault of the server, not of the "
            "request (calls with ready embeddings still work); tell the server's operator"
        )
    if isinstance(exc, FaceIdError):
        return grpc.StatusCode.INVALID_ARGUMENT, shorten(str(exc))
    ref = uuid.uuid4().hex[:12]
    log.error("internal error %s: %s", ref, type(exc).__name__, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (reference {ref} in the server log)"
