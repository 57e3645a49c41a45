"""End to end through a real server process on a loopback port, with the real client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceid.client.client import (
    DetectedFace,
    FaceIdClient,
    FaceIdClientError,
    enroll_request,
    identify_request,
)

from .conftest import encode
from .helpers import ServerProcess, code_of
from .helpers import unit_values as unit


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("server")).start()
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[FaceIdClient]:
    with FaceIdClient(server.address, timeout=60, api_key=server.admin_key) as c:
        yield c


def test_health_checking_says_serving(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="faceid.v1.FaceId")
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_each_error_has_its_status_code_and_a_message(client: FaceIdClient) -> None:
    client.create_gallery("codes")
    assert code_of(lambda: client.create_gallery("codes")) == "ALREADY_EXISTS"
    assert code_of(lambda: client.get_gallery("nope")) == "NOT_FOUND"
    assert code_of(lambda: client.identify("codes", photo=b"not a photo")) == "INVALID_ARGUMENT"
    assert code_of(lambda: client.identify("codes", embedding=[0.1] * 7)) == "INVALID_ARGUMENT"
    assert code_of(lambda: client.identify("codes", embedding=unit(1), top_k=10_000)) == "INVALID_ARGUMENT"
    assert code_of(lambda: client.enroll("codes", "x", embedding=[float("nan")] * 128)) == "INVALID_ARGUMENT"
    assert code_of(lambda: client.get_identity("codes", "nobody")) == "NOT_FOUND"
    bad_model = enroll_request("codes", "x", embedding=unit(1))
    bad_model.probe.embedding.model = "facenet/2015"
    assert code_of(lambda: client._call("Enroll", bad_model)) == "FAILED_PRECONDITION"
    huge = b"\xff" * (40 * 1024 * 1024)
    assert code_of(lambda: client.identify("codes", photo=huge)) == "RESOURCE_EXHAUSTED"
    noise = np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    slow = identify_request("codes", photo=encode(noise, "JPEG"))  # detection takes far longer than 5 ms
    assert code_of(lambda: client._call("Identify", slow, timeout=0.005)) == "DEADLINE_EXCEEDED"
    assert client.get_gallery("codes").face_count == 0


def test_embeddings_enrol_identify_update_and_delete(client: FaceIdClient) -> None:
    client.create_gallery("vectors")
    for i in range(20):
        client.enroll(
            "vectors", f"person {i}/x", embedding=unit(i), display_name=f"P{i}", attributes={"n": i}
        )
    [face] = client.identify("vectors", embedding=unit(7), top_k=3)
    assert face.box is None and face.matches[0].identity_id == "person 7/x" and face.matches[0].is_match
    assert face.matches[0].attributes == {"n": 7} and not face.matches[1].is_match
    ident = client.update_identity("vectors", "person 7/x", display_name="Seven")
    assert ident.display_name == "Seven" and ident.attributes == {"n": 7}
    assert len(list(client.list_identities("vectors", page_size=6))) == 20
    assert client.verify("vectors", embedding=unit(7), identity_id="person 7/x").is_match
    assert not client.verify("vectors", embedding=unit(7), other_embedding=unit(8)).is_match
    removed = client.delete_identity("vectors", "person 7/x")
    assert len(removed) == 1
    [face] = client.identify("vectors", embedding=unit(7), top_k=3)
    assert "person 7/x" not in [m.identity_id for m in face.matches]


def test_bulk_enrol_reports_each_item_and_a_bad_photo_fails_alone(client: FaceIdClient, faces: Path) -> None:
    client.create_gallery("bulk")
    photo = (faces / "fr_openface_examples7" / "images" / "obama" / "001.jpg").read_bytes()
    requests = [
        enroll_request("bulk", "obama", photo),
        enroll_request("bulk", "junk", b"\x00garbage"),
        enroll_request("bulk", "nobody", encode(np.full((100, 100, 3), 200, np.uint8))),
        enroll_request("bulk", "vector", embedding=unit(3)),
    ]
    results = list(client.bulk_enroll(requests))
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert results[0].faces and not results[0].error_code
    assert results[1].error_code == "INVALID_ARGUMENT" and "not an image" in results[1].error_message
    assert results[2].error_code == "INVALID_ARGUMENT" and "no face" in results[2].error_message
    assert results[3].faces
    gallery = client.get_gallery("bulk")
    assert gallery.face_count == 2
    assert (
        gallery.index_kind == "exact" and gallery.index_device == "cpu"
    )  # a small gallery: exact, on the CPU


def test_a_batch_enrols_each_item_in_order_and_a_bad_item_fails_alone(client: FaceIdClient) -> None:
    client.create_gallery("batch")
    requests = [enroll_request("batch", f"p{i}", embedding=unit(100 + i)) for i in range(300)]
    requests[7] = enroll_request("batch", "short", embedding=[0.1] * 5)
    requests[150] = enroll_request("batch", "junk", b"\x00garbage")
    results = client.enroll_batch(requests)
    assert [r.index for r in results] == list(range(300))
    assert results[7].error_code == "INVALID_ARGUMENT" and "128" in results[7].error_message
    assert results[150].error_code == "INVALID_ARGUMENT" and "not an image" in results[150].error_message
    assert all(len(r.faces) == 1 and not r.error_code for i, r in enumerate(results) if i not in (7, 150))
    assert client.get_gallery("batch").face_count == 298
    [face] = client.identify("batch", embedding=unit(100 + 42), top_k=1)
    assert face.matches[0].identity_id == "p42" and face.matches[0].face_id == results[42].faces[0].face_id


def test_a_batch_must_hold_one_to_ten_thousand_items(client: FaceIdClient) -> None:
    client.create_gallery("batch-limits")
    assert code_of(lambda: client.enroll_batch([])) == "INVALID_ARGUMENT"
    too_many = [enroll_request("batch-limits", "x", embedding=[0.0])] * 10_001
    with pytest.raises(FaceIdClientError) as info:
        client.enroll_batch(too_many)
    assert info.value.code == "INVALID_ARGUMENT" and "10,000" in info.value.message
    assert client.get_gallery("batch-limits").face_count == 0


def test_photos_round_trip_and_survive_a_restart(faces: Path, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    root = faces / "lfw_orig_subset10_krasserm" / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())
    try:
        with FaceIdClient(server.address, timeout=120, api_key=server.admin_key) as c:
            c.create_gallery("people")
            requests = [
                enroll_request("people", p.name, photo.read_bytes())
                for p in people
                for photo in sorted(p.iterdir())[:2]
            ]
            assert all(not r.error_code for r in c.bulk_enroll(requests))
            probe = sorted(people[0].iterdir())[5].read_bytes()
            [face] = c.identify("people", photo=probe, top_k=3)
            assert face.matches[0].identity_id == people[0].name and face.box is not None
            assert c.verify("people", photo=probe, identity_id=people[0].name).is_match
            detected = c.detect(probe)
            assert len(detected) == 1 and len(detected[0].landmarks) == 5
            [embedded] = c.embed(probe)
            assert len(embedded.embedding) == 128  # type: ignore[union-attr]
            c.delete_identity("people", people[1].name)
            before = c.identify("people", photo=probe, top_k=5)
    finally:
        assert server.stop() == 0
    server.start()  # the same data directory: no new admin key, the first one still works
    try:
        with FaceIdClient(server.address, timeout=120, api_key=server.admin_key) as c:
            assert c.identify("people", photo=probe, top_k=5) == before
            assert c.get_gallery("people").identity_count == len(people) - 1
    finally:
        server.stop()


def test_the_command_line_enrols_a_folder_and_identifies(
    server: ServerProcess, client: FaceIdClient, faces: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "people"
    src = faces / "lfw_orig_subset10_krasserm" / "images"
    for person in sorted(p for p in src.iterdir() if p.is_dir())[:3]:
        (folder / person.name).mkdir(parents=True)
        for photo in sorted(person.iterdir())[:2]:
            (folder / person.name / photo.name).write_bytes(photo.read_bytes())
    (folder / sorted(src.iterdir())[0].name / "broken.jpg").write_bytes(b"\xff\xd8 broken")

    def faceid(*args: str) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "faceid.client.cli",
                "--server",
                server.address,
                "--api-key",
                server.admin_key,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    faceid("galleries", "create", "cli")
    summary = faceid("enroll", "cli", str(folder))
    assert "enrolled 6 faces from 6 of 7 photos" in summary and "broken.jpg" in summary
    first = sorted(p for p in src.iterdir() if p.is_dir())[0]
    output = faceid("identify", "cli", str(sorted(first.iterdir())[4]))
    assert f"MATCH {first.name}" in output
    assert first.name in faceid("identities", "cli", "list")
    # --face names the face: a rule, or a box (here one far off the face: no match)
    probe = str(sorted(first.iterdir())[4])
    assert f"MATCH {first.name}" in faceid("identify", "cli", probe, "--face", "largest")
    assert "same person" in faceid("verify", "cli", probe, "--identity", first.name, "--face", "centre")
    assert f"MATCH {first.name}" not in faceid("identify", "cli", probe, "--face", "0,0,40,40")
    # many probes: a folder of photos, a .npy of embeddings; CSV with a row per face
    rows = faceid("identify", "cli", str(folder / first.name))
    assert rows.splitlines()[0] == "probe,face,identity_id,distance,is_match,error"
    assert sum(f",{first.name}," in line and line.endswith(",True,") for line in rows.splitlines()) == 2
    assert "broken.jpg" in rows and "INVALID_ARGUMENT" in rows
    embedded = [
        f.embedding
        for p in sorted(first.iterdir())[:3]
        for f in client.embed(p.read_bytes())[:1]
        if isinstance(f, DetectedFace)
    ]
    np.save(tmp_path / "probes.npy", np.array(embedded, np.float32))
    answers = json.loads(faceid("--json", "identify", "cli", str(tmp_path / "probes.npy")))
    assert [a["identity_id"] for a in answers] == [first.name] * 3


def test_bulk_enrol_of_many_embeddings_batches_them_and_keeps_each_result(client: FaceIdClient) -> None:
    client.create_gallery("many")
    client.create_gallery("other")
    requests = [enroll_request("many", f"p{i}", embedding=unit(1000 + i)) for i in range(1200)]
    requests[600] = enroll_request("many", "bad", embedding=[0.5] * 128)  # not unit length
    requests[900] = enroll_request("other", "elsewhere", embedding=unit(5))
    results = list(client.bulk_enroll(requests))
    assert [r.index for r in results] == list(range(1200))
    assert results[600].error_code == "INVALID_ARGUMENT" and "unit length" in results[600].error_message
    assert all(not r.error_code and len(r.faces) == 1 for i, r in enumerate(results) if i != 600)
    assert client.get_gallery("many").face_count == 1198
    assert client.get_gallery("other").face_count == 1
    [face] = client.identify("many", embedding=unit(1000 + 1199), top_k=1)
    assert face.matches[0].identity_id == "p1199"


def test_a_bad_embedding_does_not_fail_the_identify_calls_that_share_its_search_batch(
    client: FaceIdClient,
) -> None:
    """A server process, 48 callers at once, every other one sending an embedding of the wrong size:
    those get INVALID_ARGUMENT, the others their match (before the fix every call batched with a
    bad one failed with it)."""
    client.create_gallery("mates")
    client.enroll("mates", "ann", embedding=unit(7))

    def call(i: int) -> str:
        try:
            found = client.identify("mates", embedding=unit(7) if i % 2 else [1.0] * 5)
        except FaceIdClientError as exc:
            return exc.code
        return found[0].matches[0].identity_id

    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(call, range(48)))
    assert answers[1::2] == ["ann"] * 24
    assert answers[0::2] == ["INVALID_ARGUMENT"] * 24
