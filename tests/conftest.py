"""Shared fixtures (real model weights, real photos from the shared face sets) and the test kinds.

Every test module is of one kind, a marker (``pytest -m unit``, ``-m "not e2e"``):

* ``unit``: one layer in process (the pipeline, the index, the servicer on an in-process server);
* ``integration``: the engine on both databases (SQLite and the PostgreSQL server), in process;
* ``e2e``: a real ``faceid serve`` process, called over gRPC as a user would.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from faceid.benchmarks.common import FACES_ENV, faces_dir
from faceid.engine.config import EngineConfig
from faceid.engine.service import FaceService
from faceid.engine.store import Store, make_engine
from faceid.engine.vision.pipeline import FacePipeline

from .helpers import PG_URL, fresh_postgres_database, postgres_unavailable

KINDS = {
    "unit": {
        "test_batching",
        "test_detect",
        "test_dlib_format",
        "test_embedder",
        "test_identity_cache",
        "test_image",
        "test_index",
        "test_index_gpu",
        "test_linkage",
        "test_mmod",
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
        "test_cli",
        "test_clustering",
        "test_crash_recovery",
        "test_erasure",
        "test_fuzz",
        "test_gate",
        "test_grpc",
        "test_idempotent_enrolment",
        "test_packaging",
        "test_metrics",
        "test_processes",
        "test_readiness",
        "test_reflection",
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


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineConfig]:
    if request.param == "sqlite":
        yield EngineConfig(data_dir=tmp_path / "data")
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_database() as url:
        yield EngineConfig(data_dir=tmp_path / "data", database_url=url)


@pytest.fixture
def service(config: EngineConfig, pipeline: FacePipeline) -> Iterator[FaceService]:
    s = FaceService(config)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store: SQLite in a temporary data directory, or PostgreSQL in its own schema."""
    if request.param == "sqlite":
        s = Store(make_engine(f"sqlite:///{tmp_path / 'faceid.db'}"))
        s.create_schema()
        yield s
        s.engine.dispose()
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(sa.text(f"create schema {schema}"))
    s = Store(make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"}))
    s.create_schema()
    try:
        yield s
    finally:
        s.engine.dispose()
        with admin.begin() as c:
            c.execute(sa.text(f"drop schema {schema} cascade"))
        admin.dispose()
