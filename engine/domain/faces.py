"""Faces as the engine hands them around: a box, a detection (box, score, landmarks) and an
embedded face.  Plain data: no image library, no model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Landmarks = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Box:
    """A face's box in pixels of the upright photo: ``left ≤ x < right``, ``top ≤ y < bottom``."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True)
class Detection:
    """One detected face: its box, detection score and five landmarks.

    ``landmarks`` is ``(5, 2)`` float32 (x, y) in photo pixels, in dlib's order:
    the outer and inner corner of the eye on the image's right, the outer and
    inner corner of the eye on the image's left, then the base of the nose.
    ``score`` is the HOG detector's SVM margin (higher is surer; about 0 at the
    detection threshold; ``nan`` for a box the caller gave).
    """

    box: Box
    score: float
    landmarks: Landmarks


@dataclass(frozen=True)
class Face:
    """A detected face and its embedding (128 float32, compared by Euclidean distance)."""

    detection: Detection
    embedding: np.ndarray

    @property
    def box(self) -> Box:
        return self.detection.box
