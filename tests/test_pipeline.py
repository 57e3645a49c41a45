"""The whole pipeline on real photos: photo in, faces with boxes, landmarks and embeddings out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceid.benchmarks.common import read_pairs
from faceid.engine.config import EngineConfig
from faceid.engine.domain.errors import InvalidImageError
from faceid.engine.domain.faces import Face
from faceid.engine.domain.models import DLIB_RESNET_V1
from faceid.engine.service import Engine
from faceid.engine.vision.pipeline import FacePipeline

from .conftest import encode


async def _faces_together(
    pipeline: FacePipeline, photos: list[bytes], data: Path
) -> tuple[list[list[Face]], int]:
    """Every photo's faces through the engine's photo stages, all photos at once (one engine with
    no gallery: only its pipeline and batching are used), and how many embedding batches it took."""
    engine = Engine(EngineConfig(data_dir=data), pipeline=pipeline)
    try:
        found = await asyncio.gather(*(engine.faces(p) for p in photos))
        return list(found), engine.embed_batcher.batches
    finally:
        engine.close()


def test_full_size_photos_verify_at_dlibs_threshold(
    faces: Path, pipeline: FacePipeline, tmp_path: Path
) -> None:
    """deepface's 520 pairs of full-size photos (one file a WEBP named .jpg), at the default threshold."""
    pairs = read_pairs(faces / "deepface_unit13" / "pairs.csv")
    paths = sorted({p.path1 for p in pairs} | {p.path2 for p in pairs})
    found, _ = asyncio.run(_faces_together(pipeline, [p.read_bytes() for p in paths], tmp_path))
    assert all(found), "every photo of the set holds a face"
    emb = {p: f[0].embedding for p, f in zip(paths, found, strict=True)}
    threshold = DLIB_RESNET_V1.default_threshold
    correct = [(np.linalg.norm(emb[p.path1] - emb[p.path2]) < threshold) == p.same for p in pairs]
    assert np.mean(correct) >= 0.95


def test_photos_embedded_together_get_what_each_gets_alone(
    faces: Path, pipeline: FacePipeline, tmp_path: Path
) -> None:
    """The engine's photo path, with concurrent photos' faces in shared network batches, gives
    each photo the faces and embeddings the pipeline gives it alone."""
    photos = [p.read_bytes() for p in sorted((faces / "fr_openface_examples7" / "images").glob("*/*"))[:6]]
    together, _ = asyncio.run(_faces_together(pipeline, photos, tmp_path / "mixed"))
    # photos of one size leave detection together (one CNN batch), so their faces share
    # embedding batches; photos of many sizes finish detection apart
    same, batches = asyncio.run(_faces_together(pipeline, [photos[0]] * 6, tmp_path / "same"))
    assert batches < 6, "concurrent photos share network batches"
    assert all(f[0].box == same[0][0].box for f in same)
    for data, batch_faces in zip(photos, together, strict=True):
        alone = pipeline.process(data)
        assert len(alone) == len(batch_faces)
        for a, b in zip(alone, batch_faces, strict=True):
            assert a.box == b.box
            assert np.abs(a.embedding - b.embedding).max() < 1e-4


def test_a_rgba_png_is_processed(faces: Path, pipeline: FacePipeline) -> None:
    data = (faces / "fr_openface_examples7" / "images" / "alex_lacamoire" / "001.png").read_bytes()
    assert Image.open(faces / "fr_openface_examples7/images/alex_lacamoire/001.png").mode == "RGBA"
    assert len(pipeline.process(data)) == 1


def test_aligned_chips_skip_detection_and_match_the_embedder(faces: Path, pipeline: FacePipeline) -> None:
    paths = sorted((faces / "dlib_johns5" / "images").glob("*/*"))[:4]
    via_bytes = pipeline.embed_chips([p.read_bytes() for p in paths])
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    np.testing.assert_allclose(via_bytes, pipeline.embedder.embed(arrays), atol=1e-5)


def test_a_chip_of_the_wrong_size_is_refused_with_advice(pipeline: FacePipeline) -> None:
    with pytest.raises(InvalidImageError, match="exactly 150×150"):
        pipeline.embed_chips([encode(np.zeros((112, 112, 3), np.uint8))])


def test_each_face_in_the_photo_gets_an_embedding_and_box(faces: Path, pipeline: FacePipeline) -> None:
    data = (faces / "deepface_unit13" / "images" / "id03" / "003.jpg").read_bytes()  # a WEBP named .jpg
    found = pipeline.process(data)
    assert len(found) == 1
    face = found[0]
    assert face.embedding.shape == (128,)
    assert face.detection.score > 0
    image = pipeline.decode(data)
    assert 0 <= face.box.left < face.box.right <= image.shape[1]
