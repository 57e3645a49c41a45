"""ClusterFaces through a real server process on a loopback port, with the real client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceid.client.client import FaceCluster, FaceIdClient, FaceIdClientError

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
