"""Faces as the engine hands them around: a box, a detection (box, score, landmarks) and an
embedded face.  Plain data: no image library, no model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
    ``score`` is the detector's (the CNN's output, or HOG's SVM margin: higher is
    surer, 0 at the detection threshold); ``nan`` for a box the caller gave.
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


#: How a call that takes one face of a photo picks it: the largest, or the one whose box centre
#: is nearest the photo's centre.
FaceRule = Literal["largest", "centre"]
FACE_RULES: tuple[FaceRule, ...] = ("largest", "centre")


@dataclass(frozen=True)
class FaceChoice:
    """Which face of a photo a call means where it takes one (enrol, verify; identify when given):
    a rule (None: the engine's default, :attr:`EngineConfig.face_rule`), or the face in a box the
    caller gives (no detection: the landmarks are found in that box)."""

    rule: FaceRule | None = None
    box: Box | None = None


def chosen_box(boxes: Sequence[Box], rule: FaceRule, width: int, height: int) -> int:
    """The index of the box ``rule`` picks among ``boxes`` (not empty) of a ``width`` × ``height``
    photo; ties go to the earlier box."""
    if rule == "largest":
        return max(range(len(boxes)), key=lambda i: (boxes[i].area, -i))
    cx, cy = width / 2, height / 2
    return min(
        range(len(boxes)),
        key=lambda i: (
            math.hypot((boxes[i].left + boxes[i].right) / 2 - cx, (boxes[i].top + boxes[i].bottom) / 2 - cy),
            i,
        ),
    )
