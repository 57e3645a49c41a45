"""Faults through the real server: PostgreSQL restarted under load, overload, SIGKILL during bulk
enrolment, idle and slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from faceid.client.client import (
    AsyncFaceIdClient,
    FaceIdClient,
    FaceIdClientError,
    call_metadata,
    channel_options,
    enroll_request,
)
from faceid.engine.config import EngineConfig
from faceid.engine.service import FaceService
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc
from faceid.server.admission import Backoff
from faceid.server.app import spawn

from .conftest import encode
from .helpers import ServerProcess
from .helpers import unit_values as unit
from .test_crash_recovery import check_consistent

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb in a temporary folder), so that a test may stop and
    start it without disturbing the shared one."""

    def __init__(self) -> None:
        assert PG_BIN is not None
        self.bin = PG_BIN
        self.root = Path(tempfile.mkdtemp(prefix="faceid-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.user, str(self.bin / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l", str(self.root / "log"), "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if PG_BIN is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.remove()


def test_postgres_restart_under_load_answers_unavailable_and_loses_nothing(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path / "data", "--database-url", private_postgres.url).start()
    acked: dict[str, int] = {}
    codes: Counter[str] = Counter()
    after_restart: list[str] = []
    restarted = threading.Event()
    stop = threading.Event()

    def writer() -> None:
        with FaceIdClient(server.address, timeout=10, api_key=server.admin_key) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    [face] = c.enroll("pg", f"p{i}", embedding=unit(10_000 + i))
                    acked[f"p{i}"] = face.face_id
                    code = "OK"
                except FaceIdClientError as exc:
                    code = exc.code
                    time.sleep(0.05)
                codes[code] += 1
                if restarted.is_set():
                    after_restart.append(code)

    try:
        with FaceIdClient(server.address, timeout=30, api_key=server.admin_key) as admin:
            admin.create_gallery("pg")
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1.5)
        private_postgres.stop()
        time.sleep(3.0)
        private_postgres.start()
        restarted.set()
        time.sleep(4.0)
        stop.set()
        thread.join(30)
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        assert codes["UNAVAILABLE"] > 0, "the writer never saw the database down"
        assert after_restart[-5:] == ["OK"] * 5, "writes did not recover after the restart"
        with FaceIdClient(server.address, timeout=30, api_key=server.admin_key) as c:
            for external_id in random.Random(0).sample(sorted(acked), min(50, len(acked))):
                i = int(external_id[1:])
                [hit] = c.identify("pg", embedding=unit(10_000 + i), top_k=1)
                assert hit.matches[0].identity_id == external_id
    finally:
        assert server.stop() == 0
    service = FaceService(EngineConfig(data_dir=tmp_path / "data", database_url=private_postgres.url))
    try:
        check_consistent(service, acked, set(), gallery="pg")
    finally:
        service.close()


@pytest.mark.parametrize(
    "limit",
    [{"FACEID_MAX_CONCURRENT_RPCS": "4"}, {"FACEID_MAX_INFLIGHT_BYTES": str(3 * 2**20)}],
    ids=["calls", "bytes"],
)
def test_beyond_the_queue_depth_calls_are_refused_at_once(tmp_path: Path, limit: dict[str, str]) -> None:
    """With room for 4 calls (or 3 MiB of photos, about 4 here), 40 concurrent slow calls: the excess
    get RESOURCE_EXHAUSTED quickly, the rest complete, nothing else happens."""
    noise = np.random.default_rng(0).integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    photo = encode(noise, "JPEG")
    assert 0.5 * 2**20 < len(photo) < 2**20
    proc, address, key = spawn(tmp_path / "small", env={"FACEID_WORKERS": "1", **limit})

    async def run() -> list[tuple[str, float]]:
        async with AsyncFaceIdClient(address, timeout=120, api_key=key) as c:

            async def one() -> tuple[str, float]:
                t0 = time.perf_counter()
                try:
                    await c._call("Detect", pb.DetectRequest(photo=photo))
                    code = "OK"
                except FaceIdClientError as exc:
                    code = exc.code
                return code, time.perf_counter() - t0

            return await asyncio.gather(*(one() for _ in range(40)))

    try:
        results = asyncio.run(run())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    codes = Counter(code for code, _ in results)
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= 4
    refused = max(t for code, t in results if code == "RESOURCE_EXHAUSTED")
    served = max(t for code, t in results if code == "OK")
    assert refused < served / 2, "refusals must not wait behind the calls being served"


def test_refusals_tell_callers_when_to_retry(tmp_path: Path) -> None:
    """A refused call carries gRPC's ``grpc-retry-pushback-ms``: about the configured delay."""
    photo = encode(np.random.default_rng(1).integers(0, 255, (600, 800, 3), dtype=np.uint8), "JPEG")
    env = {"FACEID_WORKERS": "1", "FACEID_MAX_CONCURRENT_RPCS": "2", "FACEID_OVERLOAD_PUSHBACK_MS": "400"}
    proc, address, key = spawn(tmp_path / "data", env=env)

    async def run() -> list[tuple[grpc.StatusCode, str]]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.FaceIdStub(channel)  # type: ignore[no-untyped-call]

            async def one() -> tuple[grpc.StatusCode, str]:
                try:
                    await stub.Detect(pb.DetectRequest(photo=photo), metadata=call_metadata(key, ()))
                    return grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), dict(exc.trailing_metadata() or ()).get("grpc-retry-pushback-ms", "")

            return await asyncio.gather(*(one() for _ in range(20)))

    try:
        results = asyncio.run(run())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    pushbacks = [int(ms) for code, ms in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED and ms]
    assert pushbacks, results
    assert all(200 <= ms <= 600 for ms in pushbacks), pushbacks  # 400 ms ± 50 % jitter


def test_the_retry_delay_grows_under_sustained_overload_and_falls_back_after() -> None:
    now = [0.0]
    backoff = Backoff(100, 2000, clock=lambda: now[0])
    delays = []
    for _ in range(40):  # 10 s of refusals, 4 per second
        delays.append(backoff.refused())
        now[0] += 0.25
    assert delays[0] == 100
    assert delays == sorted(delays) and delays[-1] == 2000  # grows, up to the maximum
    now[0] += 2.0  # 2 s without a refusal
    assert backoff.refused() <= 100 * 1.5  # back near the base


def test_idle_streams_and_slow_clients_do_not_block_others(tmp_path: Path) -> None:
    proc, address, key = spawn(tmp_path / "data", env={"FACEID_MAX_CONCURRENT_RPCS": "64"})
    md = call_metadata(key, ())
    channels = []
    try:
        with FaceIdClient(address, timeout=30, api_key=key) as c:
            c.create_gallery("busy")
            c.enroll("busy", "someone", embedding=unit(1))
            stalled = threading.Event()

            def never_finishes(i: int) -> Iterator[pb.EnrollRequest]:
                # each its own face: the same source twice would be enrolled once (idempotent)
                yield enroll_request("busy", f"slow-{i}", embedding=unit(2 + i))
                stalled.wait(60)  # a client that opens a stream and goes quiet

            calls = []
            for i in range(20):  # each on its own connection, as separate slow clients would be
                channel = grpc.insecure_channel(address, channel_options())
                channels.append(channel)
                stub = pb_grpc.FaceIdStub(channel)  # type: ignore[no-untyped-call]
                calls.append(stub.BulkEnroll(never_finishes(i), metadata=md))
            t0 = time.perf_counter()
            for i in range(50):
                assert c.identify("busy", embedding=unit(1))[0].matches[0].identity_id == "someone"
                assert i or time.perf_counter() - t0 < 10
            stalled.set()
            for call in calls:
                assert [r.index for r in call] == [0]  # each slow stream still gets its own result
            assert c.get_gallery("busy").face_count == 21
    finally:
        for channel in channels:
            channel.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


BULK_TRIALS = int(os.environ.get("FACEID_BULK_CRASH_TRIALS", "6"))


@pytest.mark.timeout(900)
def test_sigkill_during_bulk_enrolment_through_the_server_loses_no_acknowledged_face(tmp_path: Path) -> None:
    rng = random.Random(7)
    acked: dict[str, int] = {}
    key = ""
    for trial in range(BULK_TRIALS):
        proc, address, first = spawn(tmp_path)
        key = first or key
        with FaceIdClient(address, timeout=60, api_key=key) as c:
            if trial == 0:
                c.create_gallery("crash")
            requests = (
                enroll_request("crash", f"t{trial}-{i}", embedding=unit(trial * 100_000 + i))
                for i in range(50_000)
            )
            killer = threading.Timer(rng.uniform(0.3, 2.0), proc.send_signal, (signal.SIGKILL,))
            killer.start()
            try:
                for result in c.bulk_enroll(requests, timeout=60):
                    assert not result.error_code, result.error_message
                    acked[f"t{trial}-{result.index}"] = result.faces[0].face_id
            except FaceIdClientError as exc:
                assert exc.code in ("UNAVAILABLE", "CANCELLED"), exc
            killer.join()
            proc.wait(30)
        service = FaceService(EngineConfig(data_dir=tmp_path))
        try:
            check_consistent(service, acked, set(), gallery="crash")
        finally:
            service.store.engine.dispose()  # no snapshot: the next start recovers from the crash state
    assert len(acked) > 1000, "too few faces were acknowledged for the test to mean anything"
