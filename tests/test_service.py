"""The engine service: galleries, enrolment, identify, verify, identities, restarts; real everything."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from faceid.engine.config import EngineConfig, IndexConfig
from faceid.engine.domain.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
)
from faceid.engine.domain.results import EmbeddingInput
from faceid.engine.service import Engine, FaceService
from faceid.engine.vision.pipeline import FacePipeline

from .conftest import encode
from .helpers import near, unit

MODEL = "dlib-resnet-v1/flip-unit"


def test_galleries_are_created_listed_and_deleted(service: FaceService) -> None:
    service.create_gallery("b")
    service.create_gallery("a")
    assert [g.name for g in service.list_galleries()] == ["a", "b"]
    with pytest.raises(AlreadyExistsError):
        service.create_gallery("a")
    service.delete_gallery("a")
    with pytest.raises(NotFoundError, match="'a' does not exist"):
        service.stats("a")
    with pytest.raises(InvalidInputError, match="empty"):
        service.create_gallery("  ")


def test_identify_ranks_identities_by_their_best_face(service: FaceService) -> None:
    service.create_gallery("g")
    alice, bob = unit(1), unit(2)
    service.enroll_embeddings(
        "g",
        ["alice", "alice", "bob"],
        [EmbeddingInput(near(alice, 3, 0.05)), EmbeddingInput(near(alice, 4, 0.002)), EmbeddingInput(bob)],
    )
    for i in range(30):
        service.enroll_embeddings("g", [f"other{i}"], [EmbeddingInput(unit(100 + i))])
    [matches] = service.identify_embeddings("g", [EmbeddingInput(alice, MODEL)], top_k=3)
    assert matches[0].external_id == "alice"
    assert len({m.external_id for m in matches}) == 3  # one entry per identity
    assert matches[0].is_match and matches[0].distance < 0.03 and matches[0].face_id == 2
    assert matches[0].similarity == pytest.approx(1 - matches[0].distance ** 2 / 2)
    assert not matches[1].is_match
    [strict] = service.identify_embeddings("g", [EmbeddingInput(alice)], top_k=1, threshold=0.001)
    assert not strict[0].is_match


@pytest.mark.parametrize(
    ("vector", "model", "error", "message"),
    [
        (unit(1, 64), "", InvalidInputError, "has 64 values"),
        (np.full(128, np.nan, np.float32), "", InvalidInputError, "NaN"),
        (unit(1) * 1.4, "", InvalidInputError, "unit length"),
        (unit(1), "facenet/2015", FailedPreconditionError, "another model|comes from model"),
    ],
)
def test_bad_embeddings_are_refused_with_a_reason(
    service: FaceService, vector: np.ndarray, model: str, error: type[Exception], message: str
) -> None:
    service.create_gallery("g")
    with pytest.raises(error, match=message):
        service.enroll_embeddings("g", ["x"], [EmbeddingInput(vector, model)])
    with pytest.raises(error, match=message):
        service.identify_embeddings("g", [EmbeddingInput(vector, model)])
    assert service.stats("g").faces == 0


def test_top_k_and_thresholds_are_bounded(service: FaceService) -> None:
    service.create_gallery("g")
    for bad in (0, -1, 10_000):
        with pytest.raises(InvalidInputError, match="top_k"):
            service.identify_embeddings("g", [EmbeddingInput(unit(1))], top_k=bad)
    with pytest.raises(InvalidInputError, match="threshold"):
        service.identify_embeddings("g", [EmbeddingInput(unit(1))], threshold=5.0)


def test_deleted_faces_and_identities_are_never_returned(service: FaceService) -> None:
    service.create_gallery("g")
    v = unit(7)
    [face] = service.enroll_embeddings("g", ["x"], [EmbeddingInput(v)])
    service.enroll_embeddings("g", ["y", "y"], [EmbeddingInput(near(v, 1, 0.02)), EmbeddingInput(unit(8))])
    service.delete_face("g", face.face_id)
    [matches] = service.identify_embeddings("g", [EmbeddingInput(v)], top_k=5)
    assert [m.external_id for m in matches] == ["y"]
    assert len(service.delete_identity("g", "y")) == 2
    assert service.identify_embeddings("g", [EmbeddingInput(v)]) == [[]]
    with pytest.raises(NotFoundError):
        service.delete_face("g", face.face_id)
    with pytest.raises(NotFoundError):
        service.delete_identity("g", "y")


def test_identities_page_with_opaque_tokens(service: FaceService) -> None:
    service.create_gallery("g")
    service.enroll_embeddings(
        "g", [f"p{i:02d}" for i in range(23)], [EmbeddingInput(unit(i)) for i in range(23)]
    )
    seen, token = [], ""
    while True:
        page, token = service.list_identities("g", page_size=10, page_token=token)
        seen += [i.external_id for i in page]
        if not token:
            break
    assert seen == [f"p{i:02d}" for i in range(23)]
    with pytest.raises(InvalidInputError, match="page_token"):
        service.list_identities("g", page_token="garbage!")


def test_update_identity_changes_its_metadata(service: FaceService) -> None:
    service.create_gallery("g")
    service.enroll_embeddings("g", ["x"], [EmbeddingInput(unit(1))], display_name="X", attributes={"a": 1})
    updated = service.update_identity("g", "x", attributes={"a": 2})
    assert updated.display_name == "X" and updated.attributes == {"a": 2}
    with pytest.raises(InvalidInputError, match="limit"):
        service.update_identity("g", "x", attributes={"blob": "x" * 70_000})
    with pytest.raises(NotFoundError):
        service.update_identity("g", "nobody", display_name="N")


def test_a_restart_finds_everything_as_it_was(config: EngineConfig, pipeline: FacePipeline) -> None:
    first = FaceService(config)
    first.create_gallery("g")
    first.enroll_embeddings("g", [f"p{i}" for i in range(50)], [EmbeddingInput(unit(i)) for i in range(50)])
    first.delete_identity("g", "p3")
    before = first.identify_embeddings("g", [EmbeddingInput(unit(i)) for i in range(10)], top_k=3)
    first.close()
    second = FaceService(config)
    assert second.identify_embeddings("g", [EmbeddingInput(unit(i)) for i in range(10)], top_k=3) == before
    assert second.stats("g").faces == 49
    second.close()


def test_changes_after_the_last_snapshot_are_replayed(config: EngineConfig, pipeline: FacePipeline) -> None:
    first = FaceService(config)
    first.create_gallery("g")
    first.enroll_embeddings("g", ["a", "b"], [EmbeddingInput(unit(1)), EmbeddingInput(unit(2))])
    first.snapshot("g")
    first.enroll_embeddings("g", ["c"], [EmbeddingInput(unit(3))])
    first.delete_identity("g", "a")
    first.store.engine.dispose()  # no close(): as if the process had been killed
    second = FaceService(config)
    names = {m.external_id for m in second.identify_embeddings("g", [EmbeddingInput(unit(3))], top_k=5)[0]}
    assert names == {"b", "c"}
    assert second.stats("g").index.count == 2
    second.close()


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_a_damaged_snapshot_is_rebuilt_from_the_store(
    config: EngineConfig, pipeline: FacePipeline, damage: str
) -> None:
    first = FaceService(config)
    first.create_gallery("g")
    first.enroll_embeddings("g", [f"p{i}" for i in range(20)], [EmbeddingInput(unit(i)) for i in range(20)])
    first.close()
    [snapshot] = (config.data_dir / "index").glob("*.faceidx")
    data = snapshot.read_bytes()
    if damage == "corrupt":
        snapshot.write_bytes(data[:-50] + bytes(b ^ 0xFF for b in data[-50:]))
    elif damage == "truncate":
        snapshot.write_bytes(data[: len(data) // 2])
    else:
        snapshot.unlink()
    second = FaceService(config)
    [matches] = second.identify_embeddings("g", [EmbeddingInput(unit(5))], top_k=1)
    assert matches[0].external_id == "p5" and second.stats("g").index.count == 20
    second.close()


def test_identify_during_enrol_and_delete_is_consistent(service: FaceService) -> None:
    service.create_gallery("g")
    service.enroll_embeddings(
        "g", [f"base{i}" for i in range(100)], [EmbeddingInput(unit(i)) for i in range(100)]
    )
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                for matches in service.identify_embeddings(
                    "g", [EmbeddingInput(unit(i)) for i in range(5)], top_k=5
                ):
                    for m in matches:
                        assert m.external_id  # every result has an identity row
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(40):
        service.enroll_embeddings("g", [f"new{i}"], [EmbeddingInput(near(unit(i), 50 + i, 0.01))])
        service.delete_identity("g", f"new{i}")
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert service.stats("g").faces == 100


def test_the_index_switches_to_ivf_pq_as_the_gallery_grows(tmp_path: Path, pipeline: FacePipeline) -> None:
    config = EngineConfig(data_dir=tmp_path, index=IndexConfig(train_min=2000, background=False))
    service = FaceService(config)
    service.create_gallery("g")
    vectors = [EmbeddingInput(unit(i)) for i in range(2500)]
    service.enroll_embeddings("g", [f"p{i}" for i in range(2500)], vectors)
    assert service.stats("g").index.kind == "ivf_pq"
    [matches] = service.identify_embeddings("g", [EmbeddingInput(unit(42))], top_k=1)
    assert matches[0].external_id == "p42"
    service.close()
    reopened = FaceService(config)
    assert reopened.stats("g").index.kind == "ivf_pq"
    reopened.close()


def test_photos_enrol_identify_and_verify(faces: Path, tmp_path: Path, pipeline: FacePipeline) -> None:
    """The engine's photo path (decode, detect, align, the embedding batch) under every use case
    that takes a photo: the same path the gRPC server runs."""
    engine = Engine(EngineConfig(data_dir=tmp_path), pipeline=pipeline)
    run = asyncio.run
    run(engine.create_gallery("people"))
    root = faces / "lfw_orig_subset10_krasserm" / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())
    probes = []
    for person in people:
        photos = sorted(person.iterdir())
        for photo in photos[:3]:
            run(engine.enroll("people", person.name, photo.read_bytes(), display_name=person.name))
        probes += [(person.name, p) for p in photos[3:6]]
    correct = 0
    for name, photo in probes:
        [face] = run(engine.identify("people", photo.read_bytes(), top_k=3)).faces[:1]
        assert face.box is not None and face.box.width > 20
        correct += face.matches[0].external_id == name
    assert correct / len(probes) >= 0.9
    name, photo = probes[0]
    same = run(engine.verify_identity("people", photo.read_bytes(), name))
    assert same.is_match and same.face_id is not None
    other = next(p for n, p in probes if n != name)
    assert not run(engine.verify_pair("people", photo.read_bytes(), other.read_bytes())).is_match
    with pytest.raises(InvalidInputError, match="no face"):
        run(engine.enroll("people", "nobody", encode(np.full((200, 300, 3), 128, np.uint8))))
    with pytest.raises(InvalidInputError, match="empty"):
        run(engine.enroll("people", "nobody", b""))
    assert run(engine.gallery("people")).faces == 30
    engine.close()


def test_identify_shows_identity_changes_at_once(service: FaceService) -> None:
    service.create_gallery("g")
    service.enroll_embeddings(
        "g", ["x", "y"], [EmbeddingInput(unit(1)), EmbeddingInput(unit(2))], display_name="Old"
    )
    assert service.identify_embeddings("g", [EmbeddingInput(unit(1))], top_k=1)[0][0].display_name == "Old"
    service.update_identity("g", "x", display_name="New", attributes={"k": 1})
    [match] = service.identify_embeddings("g", [EmbeddingInput(unit(1))], top_k=1)[0]
    assert (match.display_name, match.attributes) == ("New", {"k": 1})
    service.delete_identity("g", "x")
    assert [
        m.external_id for m in service.identify_embeddings("g", [EmbeddingInput(unit(1))], top_k=2)[0]
    ] == ["y"]
