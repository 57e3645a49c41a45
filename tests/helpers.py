"""Helpers the test modules share: vectors, PostgreSQL databases, a server process."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import numpy as np
import pytest
import sqlalchemy as sa

from faceid.client.client import FaceIdClient, FaceIdClientError
from faceid.engine.store import Store
from faceid.server.app import spawn

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_postgres_database(options: str = "") -> Iterator[str]:
    """The URL of a fresh PostgreSQL database (``options``: a query string such as
    ``?options=-ctimezone%3DUTC``), dropped afterwards, whatever still holds it."""
    name = f"faceid_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"create database {name}"))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}{options}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"drop database {name} with (force)"))
        admin.dispose()


def postgres_unavailable() -> str | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL at 127.0.0.1:5432 did not answer ({type(exc).__name__}); .ci/run starts it"


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, seed: int, scale: float = 0.01) -> np.ndarray:
    w = v + np.random.default_rng(seed).normal(0, scale, v.shape).astype(np.float32)
    out: np.ndarray = w / np.linalg.norm(w)
    return out


def unit_values(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=128)
    return [float(x) for x in v / np.linalg.norm(v)]


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return v / np.linalg.norm(v)


def make_gallery(store: Store, name: str = "staff"):  # type: ignore[no-untyped-def]
    return store.create_gallery(name, "dlib-resnet-v1", "flip-l2", 128, "euclidean")


def code_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(FaceIdClientError) as info:
        call()
    assert info.value.message and "Traceback" not in info.value.message
    return info.value.code


class ServerProcess:
    """``faceid serve`` in a child process on a free loopback port."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.env = env  # FACEID_* settings, over the process's own environment
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.admin_key = ""  # printed on the first start only; kept across restarts

    def start(self) -> Self:
        self.proc, self.address, key = spawn(self.data_dir, *self.extra, env=self.env)
        self.admin_key = key or self.admin_key
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def client(self, timeout: float = 120) -> FaceIdClient:
        """A client with the admin key."""
        return FaceIdClient(self.address, timeout=timeout, api_key=self.admin_key)

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text()
