"""Detection and landmarks on real photos, as they come from cameras and phones."""

from __future__ import annotations

from dataclasses import astuple, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceid.engine.config import DecodeConfig, DetectConfig, PipelineConfig
from faceid.engine.vision.detect import FaceDetector
from faceid.engine.vision.image import decode_image
from faceid.engine.vision.pipeline import FacePipeline

from .conftest import encode


def photo(faces: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(faces / rel).convert("RGB"))


def test_every_face_in_a_group_photo_is_found(faces: Path, pipeline: FacePipeline) -> None:
    people = ["Colin_Powell", "Tony_Blair", "Serena_Williams"]
    canvas = np.full((300, 900, 3), 90, np.uint8)
    for i, name in enumerate(people):
        canvas[25:275, 25 + 300 * i : 275 + 300 * i] = photo(faces, f"lfw/images/{name}/0001.jpg")
    found = pipeline.detect(encode(canvas, "JPEG"))
    # each person's face at its tile's centre (Tony Blair's photo also holds a bystander's face,
    # which the CNN finds too)
    for i in range(3):
        cx, cy = 150 + 300 * i, 150
        assert any(
            abs((d.box.left + d.box.right) / 2 - cx) < 40 and abs((d.box.top + d.box.bottom) / 2 - cy) < 40
            for d in found
        ), f"{people[i]}'s face was not found"
    for d in found:
        assert d.landmarks.shape == (5, 2)
        assert d.box.left - 5 <= d.landmarks[:, 0].min() and d.landmarks[:, 0].max() <= d.box.right + 5


def test_a_photo_without_a_face_has_no_faces(pipeline: FacePipeline) -> None:
    rng = np.random.default_rng(1)
    landscape = np.clip(rng.normal(120, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
    assert pipeline.process(encode(landscape, "JPEG")) == []


def test_a_face_touching_the_border_is_found_and_embedded(faces: Path, pipeline: FacePipeline) -> None:
    full = photo(faces, "fr_openface_examples7/images/obama/001.jpg")
    whole = pipeline.process(full)[0]
    cut = np.ascontiguousarray(full[:, int(whole.box.left) + 10 :])
    found = pipeline.process(cut)
    assert found, "the face whose left edge is cut off by the border was not found"
    assert found[0].box.left == pytest.approx(0, abs=15)
    assert np.linalg.norm(found[0].embedding - whole.embedding) < 0.45


def test_exif_rotated_phone_photo_is_detected_upright(faces: Path, pipeline: FacePipeline) -> None:
    upright = Image.open(faces / "fr_openface_examples7/images/biden/001.jpg").convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    found = pipeline.process(encode(stored, "JPEG", quality=95, exif=exif))
    reference = pipeline.process(np.asarray(upright))
    assert len(found) == len(reference) >= 1
    assert np.linalg.norm(found[0].embedding - reference[0].embedding) < 0.2
    assert np.allclose(astuple(found[0].box), astuple(reference[0].box), atol=3)
    sideways = pipeline.decode(encode(stored, "JPEG", quality=95))  # without the tag it lies on its side
    assert sideways.shape[:2] == (upright.width, upright.height) != (upright.height, upright.width)


def test_min_face_size_drops_smaller_faces(faces: Path) -> None:
    image = photo(faces, "lfw/images/Colin_Powell/0001.jpg")
    assert FaceDetector(DetectConfig(min_face_size=40)).find_boxes(image)
    assert FaceDetector(DetectConfig(min_face_size=200)).find_boxes(image) == []


def test_a_large_photo_is_scanned_downscaled_and_boxes_come_back_in_its_pixels(faces: Path) -> None:
    image = Image.open(faces / "fr_openface_examples7/images/obama/001.jpg").convert("RGB")
    big = np.asarray(image.resize((image.width * 3, image.height * 3), Image.Resampling.BICUBIC))
    detector = FaceDetector(DetectConfig(max_detect_pixels=1_000_000))
    small_box = FaceDetector(DetectConfig(max_detect_pixels=1_000_000)).find_boxes(np.asarray(image))[0][0]
    big_box = detector.find_boxes(big)[0][0]
    assert big_box.left == pytest.approx(3 * small_box.left, rel=0.1)
    assert big_box.width == pytest.approx(3 * small_box.width, rel=0.1)


@pytest.mark.parametrize("detector", ["hog", "cnn"])
def test_a_small_face_missed_at_the_first_scale_is_found_by_the_finer_retry(
    faces: Path, detector: str
) -> None:
    image = Image.open(faces / "lfw/images/Colin_Powell/0001.jpg").convert("RGB")
    small = np.asarray(image.resize((100, 100), Image.Resampling.LANCZOS))  # face ≈ 50 px
    config = DetectConfig(detector=detector, upsample=0, min_face_size=0)  # type: ignore[arg-type]
    assert FaceDetector(replace(config, retry_upsample=0)).find_boxes(small) == []
    assert FaceDetector(replace(config, upsample=1, retry_upsample=0)).find_boxes(small)
    [(box, _)] = FaceDetector(config).find_boxes(small)  # the default: retry at upsample 1
    assert 35 <= box.width <= 65


def test_configured_pipeline_uses_its_detector_settings() -> None:
    config = replace(PipelineConfig(), detect=DetectConfig(upsample=0))
    assert FacePipeline(config).detector.config.upsample == 0


def _profiles(faces: Path, n: int = 8) -> list[np.ndarray]:
    """The first profile photo of the first ``n`` people of cfp_dev, decoded."""
    paths = sorted((faces / "cfp_dev" / "images").glob("*/profile_01.jpg"))[:n]
    assert len(paths) == n, "cfp_dev is missing from the shared face sets"
    return [decode_image(p.read_bytes(), DecodeConfig()) for p in paths]


def test_the_cnn_detector_finds_the_profile_faces_hog_misses(faces: Path) -> None:
    """cfp_dev's profile shots: HOG finds 1 of these 8, the CNN all 8, each with 5 landmarks on
    the face (dlib's shape predictor on the CNN's box)."""
    photos = _profiles(faces)
    hog = FaceDetector(DetectConfig(detector="hog"))
    cnn = FaceDetector(DetectConfig(detector="cnn"))
    assert sum(bool(hog.detect(p)) for p in photos) <= 2
    for photo in photos:
        [face] = cnn.detect(photo)
        assert face.score > 0 and face.box.width >= 40
        inside = (face.landmarks[:, 0] >= face.box.left - 5) & (face.landmarks[:, 0] <= face.box.right + 5)
        assert inside.all()


def test_the_cascade_keeps_hogs_faces_and_asks_the_cnn_only_where_hog_finds_none(faces: Path) -> None:
    frontal = decode_image(
        sorted((faces / "cfp_dev" / "images").glob("*/frontal_01.jpg"))[0].read_bytes(), DecodeConfig()
    )
    hog = FaceDetector(DetectConfig(detector="hog"))
    cnn = FaceDetector(DetectConfig(detector="cnn"))
    cascade = FaceDetector(DetectConfig(detector="cascade"))
    assert [d.box for d in cascade.detect(frontal)] == [d.box for d in hog.detect(frontal)] != []
    profile = next(p for p in _profiles(faces) if not hog.detect(p))
    assert [d.box for d in cascade.detect(profile)] == [d.box for d in cnn.detect(profile)] != []


def test_a_retry_that_would_scan_no_finer_than_the_first_scan_is_skipped() -> None:
    """The pixel cap holds a 1920×1080 photo's scan at 2.07 MP whatever the upsampling: its retry
    would scan the same pixels again; a 640×480 photo's retry scans at twice the scale."""
    detector = FaceDetector(DetectConfig(detector="hog", upsample=0, retry_upsample=1))
    assert detector.attempts_for(480, 640) == [("hog", 0), ("hog", 1)]
    assert detector.attempts_for(1080, 1920) == [("hog", 0)]
    cascade = FaceDetector(DetectConfig(detector="cascade", upsample=0, retry_upsample=1))
    assert cascade.attempts_for(1080, 1920) == [("hog", 0), ("cnn", 0)]
    assert cascade.attempts_for(480, 640) == [("hog", 0), ("cnn", 0), ("cnn", 1)]


def test_the_default_detector_is_the_cnn_on_a_gpu_and_the_cascade_on_the_cpu() -> None:
    assert DetectConfig().detector == "auto"
    assert FaceDetector(DetectConfig(device="cpu")).kind == "cascade"
    assert FaceDetector(DetectConfig(detector="cnn", device="cpu")).kind == "cnn"
    if torch.cuda.is_available():
        assert FaceDetector(DetectConfig(device="cuda")).kind == "cnn"
