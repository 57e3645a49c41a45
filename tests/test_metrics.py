"""The Prometheus endpoint, scraped from real server processes under load: the counters move by
what was sent, the gauges say what the galleries hold, each process of ``--processes N`` serves
its own page."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from faceid.client.client import FaceIdClient, FaceIdClientError, enroll_request
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc
from faceid.server.app import spawn

from .helpers import ServerProcess, fresh_postgres_database, postgres_unavailable
from .helpers import unit_values as unit

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def calls(samples: Samples, method: str, code: str) -> float:
    return value(
        samples,
        "grpc_server_handled_total",
        grpc_type="unary",
        grpc_service="faceid.v1.FaceId",
        grpc_method=method,
        grpc_code=code,
    )


def metrics_urls(lines: list[str]) -> list[str]:
    [line] = [line for line in lines if line.startswith("faceid metrics on ")]
    return line.removeprefix("faceid metrics on ").split(", ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    lines: list[str] = []
    data = tmp_path_factory.mktemp("metrics")
    proc, address, key = spawn(
        data, "--set", "metrics=127.0.0.1:0", "--set", "max_concurrent_rpcs=2", lines=lines
    )
    s = ServerProcess(data)
    s.proc, s.address, s.admin_key = proc, address, key
    yield s, metrics_urls(lines)[0]
    s.stop()


def test_a_scrape_under_load_sees_the_calls_batches_and_galleries_move(
    server: tuple[ServerProcess, str], faces: Path
) -> None:
    s, url = server
    with s.client() as client:
        client.create_gallery("m")
        client.enroll_batch([enroll_request("m", f"p{i}", embedding=unit(i)) for i in range(200)])
        before = scrape(url)
        with ThreadPoolExecutor(2) as pool:  # the server takes 2 calls at once (the fixture)
            answers = list(
                pool.map(lambda i: client.identify("m", embedding=unit(i % 200), top_k=1), range(400))
            )
        photo = next((faces / "lfw_orig_subset10_krasserm" / "images").glob("*/*.jpg")).read_bytes()
        client.enroll("m", "photo", photo=photo)
    assert all(a[0].matches for a in answers)
    with FaceIdClient(s.address, timeout=10) as keyless, pytest.raises(FaceIdClientError):
        keyless.list_galleries()
    after = scrape(url)

    assert calls(after, "Identify", "OK") - calls(before, "Identify", "OK") == 400
    assert (
        calls(after, "ListGalleries", "UNAUTHENTICATED") - calls(before, "ListGalleries", "UNAUTHENTICATED")
        == 1
    )
    latency = {"grpc_type": "unary", "grpc_service": "faceid.v1.FaceId", "grpc_method": "Identify"}
    assert value(after, "grpc_server_handling_seconds_count", **latency) >= 400
    assert value(after, "grpc_server_handling_seconds_sum", **latency) > 0
    # Concurrent probes shared index searches: fewer batches than probes, every probe counted.
    batches = value(after, "faceid_batch_size_count", batcher="search") - value(
        before, "faceid_batch_size_count", batcher="search"
    )
    searched = value(after, "faceid_batch_size_sum", batcher="search") - value(
        before, "faceid_batch_size_sum", batcher="search"
    )
    assert searched == 400 and 0 < batches <= 400
    assert value(after, "faceid_stage_items_total", stage="search") >= 400
    for stage in ("decode", "embed"):
        assert value(after, "faceid_stage_items_total", stage=stage) >= 1
        assert value(after, "faceid_stage_seconds_total", stage=stage) > 0
    assert value(after, "faceid_gallery_faces", gallery="m") == 201
    assert value(after, "faceid_gallery_identities", gallery="m") >= 200  # recounted every 10 s
    assert (
        value(after, "faceid_gallery_index_info", gallery="m", kind="exact", training="false", device="cpu")
        == 1
    )
    assert value(after, "faceid_ready") == 1
    assert value(after, "process_resident_memory_bytes") > 100e6
    assert value(after, "faceid_ready_time_seconds") >= value(after, "process_start_time_seconds")


def test_calls_shed_under_overload_are_counted_by_reason(
    server: tuple[ServerProcess, str], faces: Path
) -> None:
    """max_concurrent_rpcs=2 and 8 photo calls at once, from a channel without retries: each
    refusal a caller saw is counted once, with its retry hint."""
    s, url = server
    root = faces / "lfw_orig_subset10_krasserm" / "images"
    photos = [p.read_bytes() for p in sorted(root.glob("*/*.jpg"))[:24]]
    before = scrape(url)
    metadata = (("authorization", f"Bearer {s.admin_key}"),)
    with grpc.insecure_channel(s.address, options=[("grpc.enable_retries", 0)]) as channel:
        stub = pb_grpc.FaceIdStub(channel)  # type: ignore[no-untyped-call]

        def detect(photo: bytes) -> str:
            try:
                stub.Detect(pb.DetectRequest(photo=photo), metadata=metadata, timeout=60)
                return "OK"
            except grpc.RpcError as exc:
                return str(exc.code().name)

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(detect, photos))
    after = scrape(url)
    refused = codes.count("RESOURCE_EXHAUSTED")
    assert refused > 0 and set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    counted = value(after, "faceid_refused_calls_total", reason="calls") - value(
        before, "faceid_refused_calls_total", reason="calls"
    )
    assert counted == refused
    assert (
        calls(after, "Detect", "RESOURCE_EXHAUSTED") - calls(before, "Detect", "RESOURCE_EXHAUSTED")
        == refused
    )
    assert calls(after, "Detect", "OK") - calls(before, "Detect", "OK") == codes.count("OK")
    assert (
        value(after, "faceid_pushback_seconds_count") - value(before, "faceid_pushback_seconds_count")
        == refused
    )


def test_each_process_serves_its_own_page_and_says_how_far_behind_it_is(tmp_path: Path) -> None:
    lines: list[str] = []
    proc, address, key = spawn(
        tmp_path / "data", "--processes", "2", "--set", "metrics=127.0.0.1:0", lines=lines
    )
    try:
        urls = metrics_urls(lines)
        assert len(urls) == 2 and urls[0] != urls[1]
        with FaceIdClient(address, api_key=key, timeout=30) as client:
            client.create_gallery("shared")
            client.enroll_batch([enroll_request("shared", f"p{i}", embedding=unit(i)) for i in range(50)])
            for _ in range(20):  # connections are dealt out by the kernel: touch both processes
                with FaceIdClient(address, api_key=key, timeout=30) as other:
                    other.get_gallery("shared")
        pages = [scrape(u) for u in urls]
        processes = sorted(
            dict(labels)["process"]
            for page in pages
            for (name, labels) in page
            if name == "faceid_server_info"
        )
        assert processes == ["0", "1"]
        deadline = time.monotonic() + 20  # each process follows the store every sync_seconds (1 s)
        while time.monotonic() < deadline:
            pages = [scrape(u) for u in urls]
            caught_up = [
                value(page, "faceid_gallery_faces", gallery="shared") == 50
                and value(page, "faceid_gallery_changes_behind", gallery="shared") == 0
                for page in pages
            ]
            if all(caught_up):
                break
            time.sleep(0.2)
        assert all(caught_up), pages
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_metrics_are_off_unless_asked_for(tmp_path: Path) -> None:
    lines: list[str] = []
    proc, address, _ = spawn(tmp_path / "data", lines=lines)
    try:
        assert not any("metrics" in line for line in lines)
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_call_cut_off_by_its_deadline_is_counted_as_deadline_exceeded(
    server: tuple[ServerProcess, str],
) -> None:
    """A stream whose client sends nothing until its 0.5 s deadline passes: gRPC cancels the
    handler, and the count says why (not CANCELLED, which would read as clients giving up)."""
    s, url = server
    labels = {"grpc_type": "bidi_stream", "grpc_service": "faceid.v1.FaceId", "grpc_method": "BulkEnroll"}
    before = scrape(url)
    release = threading.Event()

    def nothing_yet() -> Iterator[pb.EnrollRequest]:
        release.wait(10)
        yield from ()

    metadata = (("authorization", f"Bearer {s.admin_key}"),)
    with grpc.insecure_channel(s.address) as channel:
        stub = pb_grpc.FaceIdStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as ended:
            list(stub.BulkEnroll(nothing_yet(), metadata=metadata, timeout=0.5))
        release.set()
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = scrape(url)
        counted = value(after, "grpc_server_handled_total", **labels, grpc_code="DEADLINE_EXCEEDED") - value(
            before, "grpc_server_handled_total", **labels, grpc_code="DEADLINE_EXCEEDED"
        )
        if counted:
            break
        time.sleep(0.1)
    assert counted == 1
    assert value(after, "grpc_server_handled_total", **labels, grpc_code="CANCELLED") == value(
        before, "grpc_server_handled_total", **labels, grpc_code="CANCELLED"
    )


def test_health_watch_streams_serving_with_metrics_on(server: tuple[ServerProcess, str]) -> None:
    s, _ = server
    with grpc.insecure_channel(s.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = next(stream)
        stream.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_the_page_answers_while_the_database_fails_and_counts_the_failed_readings(tmp_path: Path) -> None:
    if reason := postgres_unavailable():
        pytest.skip(reason)
    lines: list[str] = []
    with fresh_postgres_database() as database:
        proc, address, key = spawn(
            tmp_path / "data", "--database-url", database, "--set", "metrics=127.0.0.1:0", lines=lines
        )
        [url] = metrics_urls(lines)
        admin = sa.create_engine(database)
        try:
            with FaceIdClient(address, api_key=key, timeout=30) as client:
                client.create_gallery("g")
                client.enroll("g", "p0", embedding=unit(0))
            with admin.begin() as c:  # every query of the identities table now fails
                c.execute(sa.text("ALTER TABLE identities RENAME TO identities_away"))
            failing = scrape(url)  # HTTP 200
            assert value(failing, "faceid_gallery_readings_errors_total") >= 1
            assert value(failing, "faceid_ready") == 1 and value(failing, "process_resident_memory_bytes") > 0
            with admin.begin() as c:
                c.execute(sa.text("ALTER TABLE identities_away RENAME TO identities"))
            assert value(scrape(url), "faceid_gallery_identities", gallery="g") == 1
        finally:
            admin.dispose()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0


def test_the_server_reads_not_ready_while_it_drains(tmp_path: Path) -> None:
    lines: list[str] = []
    proc, address, _ = spawn(
        tmp_path / "data", "--set", "metrics=127.0.0.1:0", "--set", "drain_seconds=3", lines=lines
    )
    [url] = metrics_urls(lines)
    assert value(scrape(url), "faceid_ready") == 1
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # within the 3 s drain: the port still serves, health says NOT_SERVING
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert value(scrape(url), "faceid_ready") == 0
    assert proc.wait(60) == 0
