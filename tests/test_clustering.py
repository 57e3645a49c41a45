"""Clustering through a real server process on a loopback port, with the real client: faces sent
in a call (ClusterFaces), and whole galleries in the background (StartClustering …)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from faceid.client.client import ClusteringRun, FaceCluster, FaceIdClient, FaceIdClientError, enroll_request
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc

from .conftest import encode
from .helpers import ServerProcess, code_of, near, unit


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("server")).start()
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[FaceIdClient]:
    with FaceIdClient(server.address, timeout=300, api_key=server.admin_key) as c:
        yield c


def persons_of(cluster: FaceCluster, names: list[str]) -> set[str]:
    return {names[f.index] for f in cluster.faces}


def test_photos_of_five_people_come_back_as_five_clusters_named_by_the_enrolled_identity(
    client: FaceIdClient, faces: Path
) -> None:
    paths = sorted((faces / "dlib_johns5" / "images").glob("*/*"))
    names = [p.parent.name for p in paths]
    client.create_gallery("johns")
    client.enroll("johns", "first-john", photo=paths[0].read_bytes())
    answer = client.cluster_faces("johns", [p.read_bytes() for p in paths])
    assert not answer.errors
    assert (answer.strict_distance, answer.loose_distance) == pytest.approx((0.32, 0.36))
    assert [len(persons_of(c, names)) for c in answer.clusters] == [1] * 5
    assert sorted(len(c.faces) for c in answer.clusters) == sorted(names.count(n) for n in set(names))
    own = next(c for c in answer.clusters if names[0] in persons_of(c, names))
    assert own.identity_id == "first-john"
    assert {f.identity_id for f in own.faces} == {"first-john"}
    assert all(c.identity_id == "" for c in answer.clusters if c is not own)
    for c in answer.clusters:
        assert not c.singleton and 0 < c.cohesion <= 1 and 0 <= c.representative < len(c.faces)
        assert all(f.box is not None for f in c.faces)


def test_a_probe_that_gives_no_face_is_listed_with_its_status_and_the_rest_are_clustered(
    client: FaceIdClient,
) -> None:
    client.create_gallery("mixed")
    a, b = unit(1), unit(2)
    blank = encode(Image.new("RGB", (200, 200), (128, 128, 128)))
    probes: list[bytes | list[float]] = [
        a.tolist(),
        b"not a photo",
        near(a, 3).tolist(),
        [0.5] * 7,
        blank,
        b.tolist(),
    ]
    answer = client.cluster_faces("mixed", probes)
    assert [(e.index, e.error_code) for e in answer.errors] == [
        (1, "INVALID_ARGUMENT"),
        (3, "INVALID_ARGUMENT"),
        (4, "INVALID_ARGUMENT"),
    ]
    assert "no face" in answer.errors[2].error_message
    assert [[f.index for f in c.faces] for c in answer.clusters] == [[0, 2], [5]]
    assert [c.singleton for c in answer.clusters] == [False, True]
    assert answer.clusters[1].cohesion == 0 and answer.clusters[0].faces[0].box is None


def test_stricter_distances_split_what_the_defaults_join(client: FaceIdClient) -> None:
    client.create_gallery("strict")
    a = unit(5)
    probes = [a.tolist(), near(a, 6, 0.02).tolist()]  # ~0.2 apart
    assert len(client.cluster_faces("strict", probes).clusters) == 1
    split = client.cluster_faces("strict", probes, strict_distance=0.05, loose_distance=0.05)
    assert len(split.clusters) == 2 and split.strict_distance == pytest.approx(0.05)


def test_the_call_refuses_what_it_cannot_cluster_with_a_message_that_says_what_to_send(
    client: FaceIdClient,
) -> None:
    client.create_gallery("limits")
    assert code_of(lambda: client.cluster_faces("nowhere", [unit(1).tolist()])) == "NOT_FOUND"
    assert code_of(lambda: client.cluster_faces("limits", [])) == "INVALID_ARGUMENT"
    with pytest.raises(FaceIdClientError) as bad:
        client.cluster_faces("limits", [unit(1).tolist()], strict_distance=0.5, loose_distance=0.3)
    assert bad.value.code == "INVALID_ARGUMENT" and "strict_distance ≤ loose_distance" in str(bad.value)
    many = np.tile(unit(1), (20_001, 1)).tolist()
    with pytest.raises(FaceIdClientError) as big:
        client.cluster_faces("limits", many)
    assert big.value.code == "INVALID_ARGUMENT" and "20,000" in str(big.value)


def run_to_end(client: FaceIdClient, gallery: str, run_id: int) -> ClusteringRun:
    run = client.wait_clustering(gallery, run_id, poll=0.2, timeout=240)
    assert run.state == "SUCCEEDED", run.error
    return run


def test_a_gallery_of_real_photos_clusters_in_the_background_by_person_and_survives_a_restart(
    faces: Path, tmp_path: Path
) -> None:
    paths = sorted((faces / "dlib_johns5" / "images").glob("*/*"))
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as client:
            client.create_gallery("archive")
            person = {}  # every photo its own identity, as a photo archive holds them
            for i, path in enumerate(paths):
                [face] = client.enroll("archive", f"photo-{i:02d}", photo=path.read_bytes())
                person[face.face_id] = path.parent.name
            started = client.start_clustering("archive")
            assert started.state == "RUNNING" and started.face_count == len(paths)
            run = run_to_end(client, "archive", started.run_id)
            clusters = list(client.list_clusters("archive", run.run_id))
            assert (run.cluster_count, run.singleton_count) == (5, 0) and len(clusters) == 5
            assert [len({person[f] for f in c.face_ids}) for c in clusters] == [1] * 5
            assert sorted(len(c.face_ids) for c in clusters) == sorted(
                list(person.values()).count(p) for p in set(person.values())
            )
            assert [c.rank for c in clusters] == [1, 2, 3, 4, 5]
            first = clusters[0]
            assert first.representative_face_id in first.face_ids and 0 < first.cohesion <= 1
            assert first.identity_ids[0].startswith("photo-") and first.identity_id in first.identity_ids
            assert [r.run_id for r in client.list_clusterings("archive")] == [run.run_id]
        assert server.stop() == 0
        server.start()
        with server.client() as client:
            assert client.get_clustering("archive", run.run_id).state == "SUCCEEDED"
            assert list(client.list_clusters("archive", run.run_id)) == clusters
            gone = first.face_ids[0]
            client.delete_face("archive", gone)
            after = list(client.list_clusters("archive", run.run_id))
            assert gone not in after[0].face_ids and len(after[0].face_ids) == len(first.face_ids) - 1
            client.delete_clustering("archive", run.run_id)
            assert code_of(lambda: client.get_clustering("archive", run.run_id)) == "NOT_FOUND"
    finally:
        server.stop()


def fill(client: FaceIdClient, gallery: str, n: int) -> None:
    client.create_gallery(gallery)
    for start in range(0, n, 5000):
        requests = [
            enroll_request(gallery, f"p{i}", embedding=unit(i).tolist())
            for i in range(start, min(n, start + 5000))
        ]
        assert not any(r.error_code for r in client.enroll_batch(requests))


def test_a_run_cut_off_by_a_crash_reads_as_failed_and_starts_again(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as client:
            fill(client, "big", 30_000)
            run = client.start_clustering("big")
            assert code_of(lambda: client.start_clustering("big")) == "FAILED_PRECONDITION"
            assert code_of(lambda: list(client.list_clusters("big", run.run_id))) == "FAILED_PRECONDITION"
            while (seen := client.get_clustering("big", run.run_id)).phase in ("starting",):
                time.sleep(0.02)
            assert seen.state == "RUNNING", "the run ended before the kill: give it more faces"
        assert server.proc is not None
        server.proc.kill()  # SIGKILL: no chance to say anything
        server.proc.wait(30)
        server.start()
        with server.client() as client:
            cut = client.get_clustering("big", run.run_id)
            assert cut.state == "FAILED" and "start the clustering again" in cut.error
            again = client.start_clustering("big")
            done = run_to_end(client, "big", again.run_id)
            assert done.singleton_count == 30_000 and done.cluster_count == 0
    finally:
        server.stop()


def test_gallery_runs_refuse_what_they_cannot_do_with_a_message_that_says_what_to_send(
    client: FaceIdClient, server: ServerProcess
) -> None:
    client.create_gallery("empty-runs")
    assert code_of(lambda: client.start_clustering("empty-runs")) == "FAILED_PRECONDITION"
    assert code_of(lambda: client.start_clustering("no-such-gallery")) == "NOT_FOUND"
    assert code_of(lambda: client.get_clustering("empty-runs", 999)) == "NOT_FOUND"
    bad = pb.GetClusteringRequest(name="galleries/empty-runs/clusterings/abc")
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.FaceIdStub(channel)  # type: ignore[no-untyped-call]
        md = [("authorization", f"Bearer {server.admin_key}")]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetClustering(bad, metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            stub.ListClusters(pb.ListClustersRequest(parent="galleries/empty-runs"), metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "clusterings/{id}" in str(info.value.details())


def test_the_command_line_clusters_a_gallery_with_progress_and_a_summary(
    server: ServerProcess, client: FaceIdClient
) -> None:
    client.create_gallery("cli-runs")
    a, b = unit(11), unit(12)
    for i, v in enumerate([a, near(a, 1, 0.02), near(a, 2, 0.02), b, near(b, 3, 0.02), unit(13)]):
        client.enroll("cli-runs", f"face-{i}", embedding=v.tolist())

    def faceid(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "faceid.client.cli", "--server", server.address]
        return subprocess.run(
            [*command, "--api-key", server.admin_key, *args], capture_output=True, text=True, timeout=300
        )

    done = faceid("cluster", "cli-runs")
    assert done.returncode == 0, done.stderr
    assert "6 faces → 2 clusters of two or more faces (5 faces) and 1 singletons" in done.stdout
    assert "#1" in done.stdout and "3 faces" in done.stdout
    run_id = client.list_clusterings("cli-runs")[0].run_id
    shown = faceid("--json", "cluster", "cli-runs", "--run", str(run_id))
    answer = json.loads(shown.stdout)
    assert answer["run"]["state"] == "SUCCEEDED" and [len(c["face_ids"]) for c in answer["largest"]] == [3, 2]
    missing = faceid("cluster", "no-such-gallery")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1 and "NOT_FOUND" in missing.stderr


def test_a_cluster_promoted_or_merged_into_an_identity_is_identified_as_it_at_once_and_after_a_restart(
    tmp_path: Path,
) -> None:
    a, b = unit(21), unit(22)
    people = {"a": [a, near(a, 1, 0.02), near(a, 2, 0.02)], "b": [b, near(b, 3, 0.02)]}
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as client:
            client.create_gallery("inbox")
            for name, vectors in people.items():
                for i, v in enumerate(vectors):
                    client.enroll("inbox", f"{name}-photo-{i}", embedding=v.tolist())
            run = run_to_end(client, "inbox", client.start_clustering("inbox").run_id)
            first, _ = list(client.list_clusters("inbox", run.run_id))
            assert sorted(first.identity_ids) == ["a-photo-0", "a-photo-1", "a-photo-2"]
            done = client.promote_cluster(
                "inbox", run.run_id, 1, "alice", display_name="Alice", attributes={"k": 1}
            )
            assert done.identity.identity_id == "alice" and done.identity.display_name == "Alice"
            assert sorted(done.moved_face_ids) == sorted(first.face_ids)
            assert done.emptied_identity_ids == ["a-photo-0", "a-photo-1", "a-photo-2"]
            [match] = client.identify("inbox", embedding=a.tolist(), top_k=1)[0].matches
            assert match.identity_id == "alice" and match.display_name == "Alice"
            again = client.promote_cluster("inbox", run.run_id, 1, "alice")  # a retry: nothing to move
            assert again.moved_face_ids == [] and again.identity.identity_id == "alice"
            assert (
                code_of(lambda: client.promote_cluster("inbox", run.run_id, 2, "alice")) == "ALREADY_EXISTS"
            )
            assert code_of(lambda: client.merge_cluster("inbox", run.run_id, 2, "bob")) == "NOT_FOUND"
            assert code_of(lambda: client.merge_cluster("inbox", run.run_id, 9, "alice")) == "NOT_FOUND"
            client.enroll("inbox", "bob", embedding=near(b, 4, 0.02).tolist())
            merged = client.merge_cluster("inbox", run.run_id, 2, "bob")
            assert len(client.get_identity("inbox", "bob").face_ids) == 3 and len(merged.moved_face_ids) == 2
            after = list(client.list_clusters("inbox", run.run_id))
            assert set(after[0].identity_ids) == {"alice"} and set(after[1].identity_ids) == {"bob"}
        assert server.stop() == 0
        server.start()
        with server.client() as client:
            assert (
                client.identify("inbox", embedding=a.tolist(), top_k=1)[0].matches[0].identity_id == "alice"
            )
            assert client.identify("inbox", embedding=b.tolist(), top_k=1)[0].matches[0].identity_id == "bob"
            assert client.get_gallery("inbox").face_count == 6
    finally:
        server.stop()


def test_an_update_run_assigns_faces_enrolled_since_to_the_earlier_clusters_without_redoing_them(
    client: FaceIdClient,
) -> None:
    client.create_gallery("growing")
    a, b = unit(31), unit(32)
    for i, v in enumerate([a, near(a, 1, 0.02), b, near(b, 2, 0.02)]):
        client.enroll("growing", f"old-{i}", embedding=v.tolist())
    first = run_to_end(client, "growing", client.start_clustering("growing", strict_distance=0.3).run_id)
    for i, v in enumerate([near(a, 3, 0.02), near(a, 4, 0.02), unit(33)]):
        client.enroll("growing", f"new-{i}", embedding=v.tolist())
    started = client.start_clustering("growing", update_of=first.run_id)
    assert started.update_of == first.run_id and started.strict_distance == pytest.approx(0.3)
    update = run_to_end(client, "growing", started.run_id)
    assert (first.total, update.total) == (4, 3)  # the update searched only the new faces
    clusters = list(client.list_clusters("growing", update.run_id))
    assert [sorted(c.identity_ids) for c in clusters] == [
        ["new-0", "new-1", "old-0", "old-1"],
        ["old-2", "old-3"],
        ["new-2"],
    ]
    assert (update.cluster_count, update.singleton_count) == (2, 1)
    assert code_of(lambda: client.start_clustering("growing", update_of=999)) == "NOT_FOUND"


def test_a_run_scoped_by_an_identity_prefix_clusters_only_the_unlabelled_faces(client: FaceIdClient) -> None:
    client.create_gallery("scoped")
    a, b = unit(41), unit(42)
    client.enroll("scoped", "alice", embedding=a.tolist())
    client.enroll("scoped", "alice", embedding=near(a, 1, 0.02).tolist())
    unlabelled = [near(a, 2, 0.02), b, near(b, 3, 0.02), unit(43)]
    for i, v in enumerate(unlabelled):
        client.enroll("scoped", f"unknown-{i}", embedding=v.tolist())
    run = client.start_clustering("scoped", identity_prefix="unknown-")
    assert run.face_count == 4 and run.identity_prefix == "unknown-"
    done = run_to_end(client, "scoped", run.run_id)
    clusters = [sorted(c.identity_ids) for c in client.list_clusters("scoped", done.run_id)]
    assert clusters == [["unknown-1", "unknown-2"], ["unknown-0"], ["unknown-3"]]
    assert code_of(lambda: client.start_clustering("scoped", identity_prefix="unk%")) == "FAILED_PRECONDITION"
