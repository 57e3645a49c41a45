"""Readiness: health checking says NOT_SERVING while the server opens its galleries and while it
drains at a stop, SERVING in between; FaceId calls meanwhile get UNAVAILABLE saying why.

A start is held in its loading step for as long as a test needs by a real lock: the faces table
of a PostgreSQL store locked by another session, which the server's count of a gallery's faces
waits for (as it would behind a slow or busy database).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceid.client.client import FaceIdClient, FaceIdClientError
from faceid.server.app import serve_command, spawn

from .helpers import ServerProcess, fresh_postgres_database, postgres_unavailable
from .helpers import unit_values as unit

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)


def wait_for(address: str, status: int, seconds: float = 60) -> float:
    """Seconds until health says ``status`` (polling every 20 ms)."""
    began = time.monotonic()
    while health(address) != status:
        assert time.monotonic() - began < seconds, f"health did not say {status} within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - began


@pytest.fixture
def postgres() -> Iterator[str]:
    if reason := postgres_unavailable():
        pytest.skip(reason)
    with fresh_postgres_database() as url:
        yield url


def enrolled_store(data_dir: Path, url: str) -> str:
    """A store with one gallery of three faces, its server stopped; the admin key."""
    server = ServerProcess(data_dir, "--database-url", url).start()
    with server.client() as client:
        client.create_gallery("g")
        for i in range(3):
            client.enroll("g", f"p{i}", embedding=unit(i))
    assert server.stop() == 0
    return server.admin_key


class FacesLocked:
    """A table (the faces table unless told) locked by another session until ``release``."""

    def __init__(self, url: str, table: str = "faces") -> None:
        self.engine = sa.create_engine(url)
        self.connection = self.engine.connect()
        self.transaction = self.connection.begin()
        self.connection.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))

    def release(self) -> None:
        self.transaction.rollback()
        self.connection.close()
        self.engine.dispose()


def test_health_says_not_serving_while_the_galleries_open_then_serving(tmp_path: Path, postgres: str) -> None:
    key = enrolled_store(tmp_path / "data", postgres)
    lock = FacesLocked(postgres)
    lines: list[str] = []
    proc = None
    try:
        proc, address, _ = spawn(
            tmp_path / "data",
            "--database-url",
            postgres,
            "--set",
            "metrics=127.0.0.1:0",
            ready=False,
            lines=lines,
        )
        assert health(address) == NOT_SERVING
        assert health(address, "faceid.v1.FaceId") == NOT_SERVING
        with (
            FaceIdClient(address, api_key=key, timeout=10) as client,
            pytest.raises(FaceIdClientError) as refused,
        ):
            client.identify("g", embedding=unit(0))
        assert refused.value.code == "UNAVAILABLE"
        assert "starting" in refused.value.message and "0 of 1 galleries open" in refused.value.message
        [metrics] = [line.split(" on ")[1] for line in lines if line.startswith("faceid metrics on")]
        scrape = _get(metrics)
        assert "faceid_ready 0.0" in scrape and "faceid_galleries_to_open 1.0" in scrape
        time.sleep(1.0)
        assert health(address) == NOT_SERVING  # held as long as the database holds it
        lock.release()
        wait_for(address, SERVING)
        assert health(address, "faceid.v1.FaceId") == SERVING
        with FaceIdClient(address, api_key=key, timeout=10) as client:
            [match] = client.identify("g", embedding=unit(1), top_k=1)[0].matches
        assert match.identity_id == "p1"
        assert proc.stdout is not None and "listening on" in proc.stdout.readline()
        assert "faceid_ready 1.0" in _get(metrics)
    finally:
        lock.release() if not lock.connection.closed else None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0


def test_the_server_serves_without_waiting_for_its_identity_cache_to_warm(
    tmp_path: Path, postgres: str
) -> None:
    """The cache is a head start, read in the background: with the identities table locked the
    server still turns SERVING (at 1M identities the warm-up took 12 s of the start)."""
    key = enrolled_store(tmp_path / "data", postgres)
    lock = FacesLocked(postgres, "identities")
    server = ServerProcess(tmp_path / "data", "--database-url", postgres, "--log-level", "INFO")
    try:
        server.start()  # returns once it says "listening on": SERVING
        assert health(server.address) == SERVING
        lock.release()
        server.admin_key = key
        with server.client() as client:
            [match] = client.identify("g", embedding=unit(2), top_k=1)[0].matches
        assert match.identity_id == "p2"
    finally:
        lock.release() if not lock.connection.closed else None
        assert server.stop() == 0
    assert "identity cache warmed: 3 identities" in server.log()


@contextmanager
def held_start(data_dir: Path, postgres: str, *flags: str) -> Iterator[subprocess.Popen[str]]:
    """A server started on a store of one gallery, held in its loading step (NOT_SERVING) until
    the block ends, when the faces table is released."""
    enrolled_store(data_dir, postgres)
    lock = FacesLocked(postgres)
    try:
        proc, address, _ = spawn(data_dir, "--database-url", postgres, *flags, ready=False)
        assert health(address) == NOT_SERVING
        yield proc
    finally:
        lock.release()


def test_a_stop_during_the_start_never_turns_serving_even_when_the_galleries_open_meanwhile(
    tmp_path: Path, postgres: str
) -> None:
    with held_start(tmp_path / "data", postgres, "--log-level", "INFO") as proc:
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the stop has reached the opening: it gives up before serving
    # (released: the gallery it was opening opens now)
    assert proc.wait(60) == 0
    assert proc.stdout is not None and "listening on" not in proc.stdout.read()
    logged = (tmp_path / "data" / "server.log").read_text()
    assert "serving on" not in logged and "snapshots written" not in logged


def test_a_first_start_that_cannot_serve_its_metrics_keeps_the_admin_key_for_the_next_start(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = subprocess.run(
            serve_command(tmp_path / "data", "--set", f"metrics=127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert failed.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in failed.stderr and "admin key" not in failed.stdout
    server = ServerProcess(tmp_path / "data").start()
    try:
        assert server.admin_key.startswith("faceid_")  # no key was made by the start that failed
        with server.client() as client:
            client.create_gallery("g")
    finally:
        assert server.stop() == 0


def test_a_stop_during_the_start_of_several_processes_exits_0_at_once(tmp_path: Path, postgres: str) -> None:
    with held_start(tmp_path / "data", postgres, "--processes", "2") as proc:
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert time.monotonic() - began < 30


def test_a_process_that_dies_during_the_start_ends_the_whole_server_with_status_1(
    tmp_path: Path, postgres: str
) -> None:
    """The supervisor watches every process while it waits for one (here the first, held by the lock)."""
    with held_start(tmp_path / "data", postgres, "--processes", "2") as proc:
        children = sorted(_children(proc.pid))
        assert len(children) >= 2
        os.kill(children[-1], signal.SIGKILL)  # the last started: the second server process
        began = time.monotonic()
        assert proc.wait(60) == 1
        assert time.monotonic() - began < 30


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc), but multiprocessing's resource tracker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and "resource_tracker" not in Path(stat.parent, "cmdline").read_text():
            found.append(int(stat.parent.name))
    return found


def test_a_stop_during_the_start_exits_at_once_and_the_next_start_has_everything(
    tmp_path: Path, postgres: str
) -> None:
    key = enrolled_store(tmp_path / "data", postgres)
    lock = FacesLocked(postgres)
    try:
        proc, address, _ = spawn(tmp_path / "data", "--database-url", postgres, ready=False)
        assert health(address) == NOT_SERVING
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert time.monotonic() - began < 20  # not waiting for the database to let go
    finally:
        lock.release()
    server = ServerProcess(tmp_path / "data", "--database-url", postgres).start()
    server.admin_key = key
    try:
        with server.client() as client:
            assert client.get_gallery("g").face_count == 3
    finally:
        assert server.stop() == 0


def test_a_stop_drains_with_not_serving_while_calls_are_still_answered(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--set", "drain_seconds=3").start()
    with server.client() as client:
        client.create_gallery("g")
        client.enroll("g", "p0", embedding=unit(0))
    assert health(server.address) == SERVING
    assert server.proc is not None
    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    wait_for(server.address, NOT_SERVING, seconds=2)
    with server.client() as client:  # a load balancer's stragglers are still served
        [match] = client.identify("g", embedding=unit(0), top_k=1)[0].matches
    assert match.identity_id == "p0"
    assert server.proc.wait(60) == 0
    assert time.monotonic() - began >= 3


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())
