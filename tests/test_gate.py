"""The gate in front of every call, attacked as the independent audit did: calls that send headers and
never their message, with and without a key; request streams that never send an item; raw bytes
that are not protobuf; a key revoked while a stream is open; a second server on the same port or
data directory.  Each through a real server process and a raw gRPC client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceid.client.client import FaceIdClient, enroll_request
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc

from .helpers import ServerProcess, code_of
from .helpers import unit_values as unit
from .test_auth import faceid_keys, new_key

ARRIVAL = 4.0  # seconds the test server gives a request message to arrive
IDLE = 8.0  # and each streamed item after the one before
IDENTIFY = "/faceid.v1.FaceId/Identify"
BULK = "/faceid.v1.FaceId/BulkEnroll"


class Server(ServerProcess):
    """``faceid serve`` with short arrival and idle limits, so that held calls end within the test."""

    def __init__(self, data_dir: Path) -> None:
        limits = {"FACEID_REQUEST_ARRIVAL_SECONDS": str(ARRIVAL), "FACEID_STREAM_IDLE_SECONDS": str(IDLE)}
        super().__init__(data_dir, env=limits)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("gate")).start()
    with FaceIdClient(s.address, timeout=60, api_key=s.admin_key) as admin:
        admin.create_gallery("door")
        admin.enroll_batch([enroll_request("door", f"p{i}", embedding=unit(i)) for i in range(50)])
    yield s
    s.stop()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


ATTACKER = Path(__file__).with_name("attack.py")


class Attack:
    """``tests/attack.py`` in a process of its own: ``calls`` calls of ``method`` that send headers
    and never a message (``persist``: reopened each second for that long); ``codes`` counts how
    they ended."""

    def __init__(self, address: str, method: str, calls: int, key: str | None, persist: float = 0) -> None:
        args = [address, method, str(calls), "8", str(persist), key or ""]
        self.proc = subprocess.Popen(
            [sys.executable, str(ATTACKER), *args], stdout=subprocess.PIPE, text=True
        )
        self.codes: dict[str, int] = {}

    def __enter__(self) -> Attack:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "opened"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate(timeout=120)  # the server must end every held call
        self.codes = json.loads(out.strip().splitlines()[-1])


def light_caller(server: Server, seconds: float) -> list[float]:
    """A well-behaved caller's identify latencies (ms) over ``seconds``, with a health check after each."""
    latencies = []
    probe = unit(7)
    with (
        FaceIdClient(server.address, timeout=30, api_key=server.admin_key) as c,
        grpc.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        c.identify("door", embedding=probe, top_k=1)  # connected: the figures are calls, not connecting
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            [face] = c.identify("door", embedding=probe, top_k=1)
            latencies.append((time.perf_counter() - start) * 1000)
            assert face.matches[0].identity_id == "p7"
            status = health.Check(health_pb2.HealthCheckRequest(service="faceid.v1.FaceId"), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    return latencies


def p99(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99))


@pytest.mark.parametrize("calls", [128, 1000])
def test_keyless_calls_that_never_send_their_message_are_refused_at_once_and_block_no_one(
    server: Server, calls: int
) -> None:
    start = time.monotonic()
    with Attack(server.address, IDENTIFY, calls, None) as attack:
        latencies = light_caller(server, 2.5)
    assert attack.codes == {"UNAUTHENTICATED": calls}
    print(f"{calls} keyless calls: light caller p99 {p99(latencies):.1f} ms over {len(latencies)} calls")
    assert p99(latencies) < 50
    assert time.monotonic() - start < ARRIVAL, "refused from the headers, not after waiting for a message"


def test_a_keyless_caller_that_keeps_reopening_its_calls_is_refused_each_time(server: Server) -> None:
    with Attack(server.address, IDENTIFY, 128, None, persist=3.0) as attack:
        latencies = light_caller(server, 2.5)
    assert set(attack.codes) == {"UNAUTHENTICATED"} and attack.codes["UNAUTHENTICATED"] >= 3 * 128
    print(f"128 keyless calls reopened each second: light caller p99 {p99(latencies):.1f} ms")
    assert p99(latencies) < 100  # each burst of 128 refusals holds the server's event loop ~30-40 ms


@pytest.mark.parametrize("calls", [128, 1000])
def test_keyed_calls_that_never_send_their_message_end_in_bounded_time_and_block_no_one(
    server: Server, calls: int
) -> None:
    start = time.monotonic()
    with Attack(server.address, IDENTIFY, calls, server.admin_key) as attack:
        latencies = light_caller(server, ARRIVAL - 1.5)  # while every call is held
    held = time.monotonic() - start
    assert attack.codes == {"DEADLINE_EXCEEDED": calls}
    print(f"{calls} keyed held calls: light caller p99 {p99(latencies):.1f} ms; all ended after {held:.1f} s")
    assert p99(latencies) < 50
    assert held < ARRIVAL + 15


def test_bulk_enroll_streams_that_never_send_an_item_end_in_bounded_time_and_block_no_one(
    server: Server,
) -> None:
    writer = new_key(server.data_dir, "writer", "door")
    time.sleep(2.5)  # the server reloads its keys every 2 s
    start = time.monotonic()
    with Attack(server.address, BULK, 130, writer) as attack:
        latencies = light_caller(server, IDLE - 1.5)
    assert time.monotonic() - start < IDLE + 15
    assert attack.codes == {"DEADLINE_EXCEEDED": 130}
    assert p99(latencies) < 50


def raw(channel: grpc.Channel, method: str, payload: bytes, key: str | None) -> str:
    """The status code of a unary call whose request is ``payload`` as it is, and its message."""
    try:
        channel.unary_unary(f"/faceid.v1.FaceId/{method}")(
            payload, metadata=bearer(key) if key else None, timeout=30
        )
        return "OK"
    except grpc.RpcError as exc:
        assert "Traceback" not in exc.details() and "Error parsing" not in exc.details()[:14]
        return str(exc.code().name)


GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", b"\x08"]


def test_bytes_that_are_not_protobuf_get_invalid_argument_or_unauthenticated_and_no_traceback(
    server: Server,
) -> None:
    log = server.data_dir / "server.log"
    before = log.stat().st_size
    methods = list(pb.DESCRIPTOR.services_by_name["FaceId"].methods_by_name)
    with grpc.insecure_channel(server.address) as channel:
        for method in methods:
            if method == "BulkEnroll":
                continue
            for payload in GARBAGE:
                assert raw(channel, method, payload, server.admin_key) == "INVALID_ARGUMENT", (
                    method,
                    payload,
                )
                assert raw(channel, method, payload, None) == "UNAUTHENTICATED", (method, payload)
        for _ in range(500):  # a flood of unauthenticated garbage
            raw(channel, "Identify", GARBAGE[0], "faceid_000000000000_nothing")
    written = log.read_bytes()[before:]
    assert b"Traceback" not in written
    print(f"{len(methods) * len(GARBAGE) * 2 + 500} bad calls wrote {len(written)} bytes of log")
    assert len(written) < 4000, written.decode(errors="replace")


def test_a_malformed_item_fails_alone_and_the_stream_goes_on(server: Server) -> None:
    items = [
        enroll_request("door", "stream-a", embedding=unit(1001)).SerializeToString(),
        b"\xff\xff\xff\xff",
        enroll_request("door", "stream-b", embedding=unit(1002)).SerializeToString(),
    ]
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(BULK, response_deserializer=pb.BulkEnrollResult.FromString)
        results = list(call(iter(items), metadata=bearer(server.admin_key), timeout=60))
    assert [r.index for r in results] == [0, 1, 2]
    assert results[0].faces and results[2].faces
    assert results[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid" in results[1].error_message


def test_a_key_revoked_while_its_bulk_enroll_stream_is_open_stops_it(server: Server) -> None:
    writer = new_key(server.data_dir, "writer", "door")
    time.sleep(2.5)
    sent: list[str] = []
    revoked = threading.Event()

    def items() -> Iterator[pb.EnrollRequest]:
        for i in range(3):
            if i == 1:
                faceid_keys(server.data_dir, "revoke", writer.split("_")[1])
                time.sleep(3.0)  # more than the 2 s refresh period
                revoked.set()
            sent.append(f"revoked-{i}")
            yield enroll_request("door", f"revoked-{i}", embedding=unit(2000 + i))

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.FaceIdStub(channel)  # type: ignore[no-untyped-call]
        codes: list[int] = []
        with pytest.raises(grpc.RpcError) as info:
            codes.extend(r.error_code for r in stub.BulkEnroll(items(), metadata=bearer(writer), timeout=60))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert revoked.is_set() and codes == [0]
    with FaceIdClient(server.address, timeout=60, api_key=server.admin_key) as admin:
        assert admin.get_identity("door", "revoked-0").face_ids
        for late in ("revoked-1", "revoked-2"):
            assert code_of(lambda late=late: admin.get_identity("door", late)) == "NOT_FOUND"


SERVE = [sys.executable, "-m", "faceid.client.cli", "serve"]


def serve_cli(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    """``faceid serve`` in the foreground, for a start that must fail: its status and output."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "faceid.client.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_second_server_on_a_busy_port_or_data_directory_refuses_to_start(
    server: Server, tmp_path: Path
) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    other_port = serve_cli(tmp_path / "other", port)
    assert other_port.returncode == 1
    assert "already in use" in other_port.stderr and "Traceback" not in other_port.stderr
    same_dir = serve_cli(server.data_dir, 0)
    assert same_dir.returncode == 1
    assert "in use by another faceid server" in same_dir.stderr and "Traceback" not in same_dir.stderr
    with FaceIdClient(
        server.address, timeout=60, api_key=server.admin_key
    ) as admin:  # the first is untouched
        for _ in range(20):
            assert admin.get_gallery("door").face_count >= 50


def test_a_second_server_on_the_same_postgresql_database_refuses_to_start(tmp_path: Path) -> None:
    from .helpers import fresh_postgres_database, postgres_unavailable

    if reason := postgres_unavailable():
        pytest.skip(reason)
    with fresh_postgres_database() as url:
        _second_server_on(url, tmp_path)


def _second_server_on(url: str, tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "first", "--database-url", url).start()
    try:
        second = subprocess.run(
            [*SERVE, "--port", "0", "--data-dir", str(tmp_path / "second"), "--database-url", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        assert "database is in use by another faceid server" in second.stderr
        assert "Traceback" not in second.stderr
        with FaceIdClient(first.address, timeout=60, api_key=first.admin_key) as c:
            c.create_gallery("still-mine")
    finally:
        assert first.stop() == 0
