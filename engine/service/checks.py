"""Checks of what callers send that need the gallery (its model, its dimension), and page tokens."""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
import numpy.typing as npt

from faceid.engine.domain.errors import FailedPreconditionError, InvalidInputError
from faceid.engine.domain.records import Gallery
from faceid.engine.domain.results import EmbeddingInput


def check_embedding(gallery: Gallery, item: EmbeddingInput) -> npt.NDArray[np.float32]:
    """A caller's embedding as the gallery stores it (unit length), or the error that refuses it."""
    model_id = f"{gallery.model_name}/{gallery.model_version}"
    if item.model and item.model != model_id:
        raise FailedPreconditionError(
            f"the embedding comes from model {item.model!r}; gallery {gallery.name!r} holds {model_id!r} "
            f"embeddings: embed the photo with {model_id}, or send the photo instead"
        )
    v = np.asarray(item.vector, dtype=np.float32).ravel()
    if v.shape != (gallery.dim,):
        raise InvalidInputError(
            f"the embedding has {v.size} values; {model_id} embeddings have {gallery.dim}"
        )
    if not np.isfinite(v).all():
        raise InvalidInputError("the embedding contains NaN or infinite values")
    norm = float(np.linalg.norm(v))
    if abs(norm - 1.0) > 1e-2:
        raise InvalidInputError(
            f"the embedding's length is {norm:.4f}; {model_id} embeddings have unit length: divide it by "
            f"its norm if it is a normalised-later embedding of the same model, or send the photo"
        )
    return v / norm


def encode_page_token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded))["after"]
        if not isinstance(after, str):
            raise TypeError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidInputError("page_token is not one this server issued; start again without it") from None
