"""Shared fixtures: real model weights, real photos from the shared face sets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceid.benchmarks.common import FACES_ENV, faces_dir
from faceid.engine.vision.pipeline import FacePipeline


@pytest.fixture(scope="session")
def faces() -> Path:
    """The shared labelled face sets; tests that need them skip when they are absent."""
    root = faces_dir()
    if not (root / "lfw").is_dir():
        pytest.skip(
            f"face data not found at {root}: set {FACES_ENV} to the folder holding lfw/, deepface_unit13/ …"
        )
    return root


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    return FacePipeline()


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    """Encode an image in memory, as a client would send it."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()
