"""Right to erasure: a deleted face, identity or gallery leaves no embedding behind, in the store,
the index, its snapshots or the database files, and stays deleted across restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceid.engine.errors import NotFoundError
from faceid.engine.pipeline import FacePipeline
from faceid.engine.service import EmbeddingInput, FaceService, ServiceConfig

from .test_service import unit


def traces(folder: Path, vector: np.ndarray) -> list[str]:
    """Files under ``folder`` holding the vector's bytes as float32 (the store) or float16 (the index)."""
    patterns = [vector.astype(np.float32).tobytes(), vector.astype(np.float16).tobytes()]
    return [f.name for f in folder.rglob("*") if f.is_file() and any(p in f.read_bytes() for p in patterns)]


def test_deleted_embeddings_leave_no_trace_in_files_and_stay_deleted(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    config = ServiceConfig(data_dir=tmp_path / "data")
    vectors = {name: unit(i) for i, name in enumerate(["keep", "erase", "face-erased", "gallery-erased"])}
    service = FaceService(config, pipeline)
    service.create_gallery("people")
    service.create_gallery("doomed")
    face_ids = {}
    for name in ("keep", "erase", "face-erased"):
        [face] = service.enroll_embeddings("people", [name], [EmbeddingInput(vectors[name])])
        face_ids[name] = face.face_id
    service.enroll_embeddings("people", ["face-erased"], [EmbeddingInput(unit(99))])  # a second face
    service.enroll_embeddings("doomed", ["gallery-erased"], [EmbeddingInput(vectors["gallery-erased"])])
    service.close()  # snapshots that hold every vector
    assert traces(tmp_path, vectors["erase"]), "the check must see a vector that is stored"

    service = FaceService(config, pipeline)
    service.delete_identity("people", "erase")
    service.delete_face("people", face_ids["face-erased"])
    service.delete_gallery("doomed")
    service.close()  # new snapshots; the database checkpoints its log on close

    for name in ("erase", "face-erased", "gallery-erased"):
        assert traces(tmp_path, vectors[name]) == [], f"{name}: embedding bytes left behind"
    assert traces(tmp_path, vectors["keep"]), "the kept face is still stored"

    service = FaceService(config, pipeline)
    try:
        for name in ("erase", "face-erased"):
            [matches] = service.identify_embeddings("people", [EmbeddingInput(vectors[name])], 5)
            assert all(m.face_id != face_ids[name] for m in matches)
        assert [
            m.external_id
            for m in service.identify_embeddings("people", [EmbeddingInput(vectors["keep"])], 1)[0]
        ] == ["keep"]
        assert service.get_identity("people", "face-erased").face_ids != (face_ids["face-erased"],)
        assert [g.name for g in service.list_galleries()] == ["people"]
        try:
            service.get_identity("people", "erase")
            raise AssertionError("the erased identity is back")
        except NotFoundError:
            pass
    finally:
        service.close()
