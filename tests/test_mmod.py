"""The torch port of dlib's MMOD CNN face detector: the file, the pyramid, and parity with dlib itself."""

from __future__ import annotations

import itertools
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from faceid.benchmarks.common import FACES_ENV, faces_dir
from faceid.engine.vision.mmod import (
    Detection,
    MmodDetector,
    default_path,
    output_to_input,
    pyramid_up_size,
    read_mmod,
    tiled_layout,
)

#: Small photos (dlib's CNN is slow on a CPU): unaligned LFW, CFP frontal and profile shots.
PHOTOS = [
    "lfw_orig_subset10_krasserm/images/Ariel_Sharon/001.jpg",
    "lfw_orig_subset10_krasserm/images/Colin_Powell/001.jpg",
    "lfw_orig_subset10_krasserm/images/Tony_Blair/001.jpg",
    "cfp_dev/images/001_50_Cent/frontal_01.jpg",
    "cfp_dev/images/001_50_Cent/profile_01.jpg",
    "cfp_dev/images/003_Aaron_Rodgers/frontal_01.jpg",
    "cfp_dev/images/003_Aaron_Rodgers/profile_01.jpg",
]
#: Photos small enough to afford dlib's ×2 upsampling on a CPU.
UPSAMPLED = ["cfp_dev/images/001_50_Cent/frontal_01.jpg", "cfp_dev/images/001_50_Cent/profile_01.jpg"]


@pytest.fixture(scope="module")
def photos_root() -> Path:
    root = faces_dir()
    for rel in PHOTOS:
        if not (root / rel).is_file():
            pytest.skip(f"face photo {rel} not found under {root}: set {FACES_ENV} to the shared face sets")
    return root


@pytest.fixture(scope="module")
def ours() -> MmodDetector:
    return MmodDetector()


@pytest.fixture(scope="module")
def theirs() -> dlib.cnn_face_detection_model_v1:
    return dlib.cnn_face_detection_model_v1(str(default_path()))


def load(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel).convert("RGB"))


def dlib_detections(
    detector: dlib.cnn_face_detection_model_v1, image: np.ndarray, upsample: int
) -> list[Detection]:
    found = detector(image, upsample)
    return [
        ((d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1), d.confidence) for d in found
    ]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inner = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner
    return inner / union if union > 0 else 0.0


def assert_same_detections(expected: list[Detection], got: list[Detection], where: str) -> None:
    assert len(got) == len(expected), f"{where}: dlib found {expected}, we found {got}"
    unused = list(range(len(got)))
    for box, score in expected:
        best = max(unused, key=lambda j: iou(box, got[j][0]))
        assert iou(box, got[best][0]) >= 0.9, f"{where}: dlib's {box} vs our {got[best][0]}"
        assert abs(got[best][1] - score) <= 0.01, f"{where}: dlib's score {score} vs our {got[best][1]}"
        unused.remove(best)


def test_the_file_holds_the_detector_dlib_describes() -> None:
    net = read_mmod(default_path())
    assert net.options.windows == ((80, 80),)
    assert 0.3 < net.options.nms_iou < 0.4
    assert (net.pyramid_padding, net.pyramid_outer_padding) == (10, 11)
    # three unpadded stride-2 convolutions: output position p is input point 8p + 14
    assert output_to_input(net) == (8, 14)


def test_the_tiled_pyramid_holds_every_level_inside_the_image_without_overlaps() -> None:
    layout = tiled_layout(480, 640)
    assert layout.rects[0] == (11, 11, 650, 490)
    sizes = [(b - t + 1, r - left + 1) for left, t, r, b in layout.rects]
    for (h0, w0), (h1, w1) in itertools.pairwise(sizes):
        assert (h1, w1) == (h0 * 5 // 6, w0 * 5 // 6)
    for i, (left, top, right, bottom) in enumerate(layout.rects):
        assert 0 <= left <= right < layout.cols and 0 <= top <= bottom < layout.rows
        for other in layout.rects[i + 1 :]:
            apart = right < other[0] or other[2] < left or bottom < other[1] or other[3] < top
            assert apart, (layout.rects[i], other)


def test_upsampling_enlarges_a_photo_as_dlibs_pyramid_up_does() -> None:
    assert pyramid_up_size(250, 250) == (501, 502)  # rect_up of the photo, rounded: 2·rows+1 by 2·cols+2


def test_detections_match_dlibs_cnn_detector_on_real_photos(
    photos_root: Path, ours: MmodDetector, theirs: dlib.cnn_face_detection_model_v1
) -> None:
    cases = [(rel, 0) for rel in PHOTOS] + [(rel, 1) for rel in UPSAMPLED]
    total = 0
    for rel, upsample in cases:
        image = load(photos_root, rel)
        expected = dlib_detections(theirs, image, upsample)
        assert_same_detections(expected, ours.detect(image, upsample), f"{rel} upsample={upsample}")
        total += len(expected)
    assert total >= len(cases) - 2  # the check compared real faces, not empty lists


def test_grey_photos_are_detected_as_dlib_detects_them(
    photos_root: Path, ours: MmodDetector, theirs: dlib.cnn_face_detection_model_v1
) -> None:
    grey = np.asarray(Image.open(photos_root / PHOTOS[1]).convert("L"))
    expected = dlib_detections(theirs, grey, 0)
    assert expected
    assert_same_detections(expected, ours.detect(grey), PHOTOS[1])


def test_detect_many_finds_what_detect_finds_photo_by_photo(photos_root: Path, ours: MmodDetector) -> None:
    images = [load(photos_root, rel) for rel in PHOTOS[:5]]  # three of 250×250 batched together, two others
    together = ours.detect_many(images)
    for image, found in zip(images, together, strict=True):
        alone = ours.detect(image)
        assert [box for box, _ in found] == [box for box, _ in alone]
        assert np.allclose([s for _, s in found], [s for _, s in alone], atol=1e-4)


def test_a_photo_without_a_face_gives_no_detections(ours: MmodDetector) -> None:
    rng = np.random.default_rng(3)
    noise = np.clip(rng.normal(120, 30, (120, 160, 3)), 0, 255).astype(np.uint8)
    assert ours.detect(noise) == []
    assert ours.detect_many([]) == []


def test_photos_too_small_for_the_network_have_no_faces(ours: MmodDetector) -> None:
    # dlib itself crashes on photos a few pixels across; we answer that there is no face
    for shape in [(0, 0, 3), (1, 1, 3), (8, 8, 3), (5, 40, 3)]:
        assert ours.detect(np.zeros(shape, np.uint8)) == []
        assert ours.detect(np.zeros(shape, np.uint8), upsample=1) == []


def test_landmarks_and_chips_on_the_cnns_boxes_are_those_of_dlibs_own_cnn_pipeline(
    photos_root: Path, theirs: dlib.cnn_face_detection_model_v1
) -> None:
    """dlib's own pipeline (its CNN detector, the 5-point shape predictor on its box,
    ``get_face_chip(150, 0.25)``) against the engine's (the torch CNN, the same predictor, the
    same chip): the same landmarks and the same chip pixels, profile shots included, and a box
    that runs past the photo's edge (Aaron Rodgers's frontal shot) reaches the predictor unclipped,
    as dlib's does."""
    from faceid.engine.config import DetectConfig
    from faceid.engine.vision.align import face_chips
    from faceid.engine.vision.detect import FaceDetector
    from faceid.engine.vision.weights import LANDMARKS_5_FILE, model_file

    shape = dlib.shape_predictor(str(model_file(LANDMARKS_5_FILE)))
    engine = FaceDetector(DetectConfig(detector="cnn", upsample=0, retry_upsample=0, min_face_size=0))
    for rel in PHOTOS[3:]:
        image = load(photos_root, rel)
        [found] = [d.rect for d in theirs(image, 0)]
        reference = shape(image, found)
        chip = dlib.get_face_chip(image, reference, size=150, padding=0.25)
        [ours] = engine.detect(image)
        expected = np.array([[p.x, p.y] for p in reference.parts()], np.float32)
        np.testing.assert_array_equal(ours.landmarks, expected, err_msg=rel)
        [our_chip] = face_chips(image, [(ours.box, ours.landmarks)])
        np.testing.assert_array_equal(our_chip, chip, err_msg=rel)
