"""Face detection (dlib's HOG frontal detector, or its MMOD CNN detector in torch:
:mod:`faceid.engine.vision.mmod`) and 5-point landmarks.

Each detector scans an 80×80 window over an image pyramid, so a face must be
about 80 px wide in the scanned image: ``upsample`` doubles the photo first
(faces down to ~40 px are found at 1).  Big photos are scaled down for the scan
alone (``max_detect_pixels``), which keeps detection time bounded; landmarks are
then found on the full-resolution photo, where the chip is cut.
"""

from __future__ import annotations

import math
import threading

import dlib
import numpy as np
import torch
from PIL import Image

from faceid.engine.config import DetectConfig
from faceid.engine.domain.faces import Box, Detection, Landmarks
from faceid.engine.vision.image import RGBImage
from faceid.engine.vision.mmod import MmodDetector
from faceid.engine.vision.weights import LANDMARKS_5_FILE, model_file

#: (left, top, right, bottom) in pixels of the scanned image, right and bottom exclusive.
RawBox = tuple[float, float, float, float]


def to_dlib(box: Box) -> dlib.rectangle:
    """dlib's rectangle for a box (inclusive right and bottom edges)."""
    return dlib.rectangle(round(box.left), round(box.top), round(box.right) - 1, round(box.bottom) - 1)


class FaceDetector:
    """A face detector (:attr:`DetectConfig.detector`: dlib's HOG, the MMOD CNN in torch, or HOG
    then the CNN) plus the 5-point shape predictor, which dlib designed for both detectors' boxes;
    safe to share between threads."""

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.config = config or DetectConfig()
        self._hog = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(model_file(LANDMARKS_5_FILE)))
        self._lock = threading.Lock()  # dlib's objects are not documented as thread-safe
        self._cnn: MmodDetector | None = None
        if self.config.detector in ("cnn", "cascade"):
            device = self.config.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._cnn = MmodDetector(device=device)  # torch: no lock, threads run it together

    def _scan_scale(self, height: int, width: int) -> float:
        scale = 2.0**self.config.upsample
        cap = math.sqrt(self.config.max_detect_pixels / (height * width))
        return min(scale, cap)

    def find_boxes(self, image: RGBImage) -> list[tuple[Box, float]]:
        """Boxes and scores of the faces in ``image``, largest first."""
        height, width = image.shape[:2]
        scale = self._scan_scale(height, width)
        upsample = round(math.log2(scale)) if scale >= 1 else 0
        if scale >= 1 and math.isclose(scale, 2.0**upsample):
            scan, scale = image, 1.0  # let the detector's pyramid do integer upsampling
        else:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            scan = np.asarray(
                Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            )
            scale, upsample = scan.shape[1] / width, 0
        raw = [] if self.config.detector == "cnn" else self._hog_boxes(scan, upsample)
        if not raw and self._cnn is not None:
            raw = [(b, s) for b, s in self._cnn.detect(scan, upsample) if s >= self.config.score_threshold]
        found: list[tuple[Box, float]] = []
        for (left, top, right, bottom), score in raw:
            box = Box(
                max(left / scale, 0.0),
                max(top / scale, 0.0),
                min(right / scale, float(width)),
                min(bottom / scale, float(height)),
            )
            if box.width >= self.config.min_face_size and box.height > 0:
                found.append((box, float(score)))
        found.sort(key=lambda item: item[0].area, reverse=True)
        return found

    def _hog_boxes(
        self, scan: RGBImage, upsample: int
    ) -> list[tuple[tuple[float, float, float, float], float]]:
        """HOG's boxes in ``scan`` as (left, top, right, bottom), right and bottom exclusive."""
        with self._lock:
            rects, scores, _ = self._hog.run(scan, upsample, self.config.score_threshold)
        return [
            ((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1), float(score))
            for rect, score in zip(rects, scores, strict=True)
        ]

    def landmarks(self, image: RGBImage, box: Box) -> Landmarks:
        """The five landmarks of the face in ``box``."""
        with self._lock:
            shape = self._shape(image, to_dlib(box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def detect(self, image: RGBImage) -> list[Detection]:
        """Every face in ``image`` with box, score and landmarks, largest first."""
        return [Detection(box, score, self.landmarks(image, box)) for box, score in self.find_boxes(image)]
