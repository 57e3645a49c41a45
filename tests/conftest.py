"""Shared fixtures (real model weights, real photos from the shared face sets) and the test kinds.

Every test module is of one kind, a marker (``pytest -m unit``, ``-m "not e2e"``):

* ``unit``: one layer in process (the pipeline, the index, the servicer on an in-process server);
* ``integration``: the engine on both databases (SQLite and the PostgreSQL server), in process;
* ``e2e``: a real ``faceid serve`` process, called over gRPC as a user would.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceid.benchmarks.common import FACES_ENV, faces_dir
from faceid.engine.vision.pipeline import FacePipeline

KINDS = {
    "unit": {
        "test_batching",
        "test_detect",
        "test_dlib_format",
        "test_embedder",
        "test_image",
        "test_index",
        "test_index_gpu",
        "test_pipeline",
        "test_proto",
        "test_resnet",
        "test_server_config",
        "test_servicer",
        "test_subspace",
    },
    "integration": {"test_benchmarks", "test_change_log", "test_service", "test_shared_store", "test_store"},
    "e2e": {
        "test_audit_hardening",
        "test_auth",
        "test_crash_recovery",
        "test_erasure",
        "test_fuzz",
        "test_gate",
        "test_grpc",
        "test_idempotent_enrolment",
        "test_packaging",
        "test_processes",
        "test_reliability",
        "test_timestamps",
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its module's kind; a module of no kind is an error, so none is missed."""
    kind_of = {module: kind for kind, modules in KINDS.items() for module in modules}
    for item in items:
        module = item.path.stem
        if module not in kind_of:
            raise pytest.UsageError(f"tests/{module}.py has no kind: add it to KINDS in tests/conftest.py")
        item.add_marker(kind_of[module])


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
