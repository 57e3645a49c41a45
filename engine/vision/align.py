"""Alignment: cut each face to the embedder's template, a 150×150 chip.

The chip geometry is the one dlib's ResNet was trained on:
``get_face_chip_details(size=150, padding=0.25)`` from the five landmarks (a
similarity transform onto fixed template points), sampled by dlib's
``extract_image_chips``, which low-pass filters (image pyramid) before shrinking
large faces, so that chips of big and small faces look alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import dlib
import numpy as np

from faceid.engine.domain.faces import Box, Landmarks
from faceid.engine.vision.detect import to_dlib
from faceid.engine.vision.embedder import Chips
from faceid.engine.vision.image import RGBImage
from faceid.engine.vision.resnet import CHIP_SIZE

CHIP_PADDING = 0.25


def _full_object_detection(box: Box, landmarks: Landmarks) -> dlib.full_object_detection:
    points = dlib.points()
    for x, y in np.rint(landmarks).astype(np.int64):
        points.append(dlib.point(int(x), int(y)))
    return dlib.full_object_detection(to_dlib(box), points)


def face_chips(
    image: RGBImage,
    faces: Sequence[tuple[Box, Landmarks]],
    size: int = CHIP_SIZE,
    padding: float = CHIP_PADDING,
) -> Chips:
    """Aligned chips ``(N, size, size, 3)`` uint8, one per ``(box, landmarks)`` in ``faces``."""
    if not faces:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    shapes = dlib.full_object_detections()
    for box, landmarks in faces:
        if landmarks.shape != (5, 2):
            raise ValueError(f"expected 5 landmarks, got an array of shape {landmarks.shape}")
        shapes.append(_full_object_detection(box, landmarks))
    chips = dlib.get_face_chips(image, shapes, size=size, padding=padding)
    return np.stack([np.asarray(c, dtype=np.uint8) for c in chips])
