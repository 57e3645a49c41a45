"""Face detection (dlib's HOG frontal detector, or its MMOD CNN detector in torch:
:mod:`faceid.engine.vision.mmod`) and 5-point landmarks.

Each detector scans an 80×80 window over an image pyramid, so a face must be about 80 px wide in
the scanned image: ``upsample`` doubles the photo first (faces down to ~40 px are found at 1).
Big photos are scaled down for the scan alone (``max_detect_pixels``), which keeps detection time
bounded; landmarks are then found on the full-resolution photo, where the chip is cut.

A photo is scanned in *attempts* (:attr:`FaceDetector.attempts`), each a detector at a scale,
until one finds a face: the configured detector at ``upsample``, then, where it found none, at
``retry_upsample`` (the finer scale recovers most of the misses at a fraction of the cost of
scanning every photo finely; BENCHMARKS.md "Choosing the detector").  The attempts are split into
steps (:meth:`FaceDetector.scan`, :meth:`FaceDetector.hog`, :meth:`FaceDetector.cnn`,
:meth:`FaceDetector.boxes`) so that the engine can batch the CNN across concurrent photos;
:meth:`FaceDetector.find_boxes` runs them in the calling thread.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Literal

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
Raw = list[tuple[RawBox, float]]
#: One attempt: a detector and the upsampling it is asked for.
Attempt = tuple[Literal["hog", "cnn"], int]


def to_dlib(box: Box) -> dlib.rectangle:
    """dlib's rectangle for a box (inclusive right and bottom edges)."""
    return dlib.rectangle(round(box.left), round(box.top), round(box.right) - 1, round(box.bottom) - 1)


@dataclass(frozen=True)
class Scan:
    """The image one attempt scans and how its pixels map back to the photo's."""

    image: RGBImage
    #: Scan pixels per photo pixel, before the detector's own ``upsample`` doublings.
    scale: float
    #: Doublings the detector does itself (its pyramid's integer upsampling).
    upsample: int
    #: The photo's size, (height, width).
    photo: tuple[int, int]

    @property
    def key(self) -> tuple[int, int, int]:
        """What scans batched through the CNN together share: size and upsampling."""
        return (self.image.shape[0], self.image.shape[1], self.upsample)


class FaceDetector:
    """A face detector (:attr:`DetectConfig.detector`: dlib's HOG, the MMOD CNN in torch, HOG then
    the CNN, or the best of these for the device) plus the 5-point shape predictor, which dlib
    designed for both detectors' boxes; safe to share between threads (HOG and the shape predictor
    run one thread at a time; the CNN, in torch, needs no lock)."""

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.config = config or DetectConfig()
        self._hog = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(model_file(LANDMARKS_5_FILE)))
        self._lock = threading.Lock()  # dlib's objects are not documented as thread-safe
        self._cnn: MmodDetector | None = None
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        #: The detector in use: "auto" is the CNN where it runs on a GPU, else the cascade.
        self.kind: Literal["hog", "cnn", "cascade"] = (
            ("cnn" if device.startswith("cuda") else "cascade")
            if self.config.detector == "auto"
            else self.config.detector
        )
        if self.kind in ("cnn", "cascade"):
            self._cnn = MmodDetector(device=device, batch_size=self.config.batch)

    @property
    def attempts(self) -> list[Attempt]:
        """The attempts, in order, until one finds a face: "hog" and "cnn" at ``upsample`` then at
        ``retry_upsample``; "cascade": HOG, then the CNN, then the CNN at ``retry_upsample``."""
        first, retry = self.config.upsample, self.config.retry_upsample
        kind = self.kind
        attempts: list[Attempt] = [("hog", first), ("cnn", first)] if kind == "cascade" else [(kind, first)]
        if retry > first:
            attempts.append(("hog" if kind == "hog" else "cnn", retry))
        return attempts

    def scale(self, height: int, width: int, upsample: int) -> float:
        """Scan pixels per photo pixel at ``upsample``: 2^upsample, capped by ``max_detect_pixels``."""
        return min(2.0**upsample, math.sqrt(self.config.max_detect_pixels / (height * width)))

    def attempts_for(self, height: int, width: int) -> list[Attempt]:
        """:attr:`attempts` for a photo of this size, less a retry that would scan no finer than
        the detector's scan before it (by 1.25× at least): a big photo whose scan the pixel cap
        already holds gains nothing from a second scan of the same size."""
        kept: list[Attempt] = []
        for kind, upsample in self.attempts:
            before = [u for k, u in kept if k == kind]
            if before and self.scale(height, width, upsample) < 1.25 * self.scale(height, width, before[-1]):
                continue
            kept.append((kind, upsample))
        return kept

    def scan(self, image: RGBImage, upsample: int) -> Scan:
        """The image to scan at ``upsample``: the photo itself where the detector's own integer
        upsampling suffices, else a resized copy (under ``max_detect_pixels``)."""
        height, width = image.shape[:2]
        scale = self.scale(height, width, upsample)
        doublings = round(math.log2(scale)) if scale >= 1 else 0
        if scale >= 1 and math.isclose(scale, 2.0**doublings):
            return Scan(image, 1.0, doublings, (height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
        return Scan(resized, resized.shape[1] / width, 0, (height, width))

    def hog(self, scan: Scan) -> Raw:
        """HOG's boxes in the scan."""
        with self._lock:
            rects, scores, _ = self._hog.run(scan.image, scan.upsample, self.config.score_threshold)
        return [
            ((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1), float(score))
            for rect, score in zip(rects, scores, strict=True)
        ]

    def cnn(self, scans: list[Scan]) -> list[Raw]:
        """The CNN's boxes in each scan, all of one upsampling (the engine batches by
        :attr:`Scan.key`); photos of one size go through the network together."""
        if self._cnn is None:
            raise RuntimeError("this detector was built without the CNN (detector = 'hog')")
        if len({scan.upsample for scan in scans}) > 1:
            raise ValueError("scans batched through the CNN must share their upsampling")
        results = self._cnn.detect_many([scan.image for scan in scans], scans[0].upsample if scans else 0)
        return [[(b, s) for b, s in result if s >= self.config.score_threshold] for result in results]

    def boxes(self, scan: Scan, raw: Raw) -> list[tuple[Box, float]]:
        """``raw`` boxes in the photo's pixels, those narrower than ``min_face_size`` dropped,
        largest first.  A box may run past the photo's edge (a face cut by the border): the shape
        predictor is given it so, as dlib's detectors give it (:meth:`with_landmarks` clips the box
        it reports)."""
        found: list[tuple[Box, float]] = []
        for (left, top, right, bottom), score in raw:
            s = scan.scale
            box = Box(left / s, top / s, right / s, bottom / s)
            if box.width >= self.config.min_face_size and box.height > 0:
                found.append((box, float(score)))
        found.sort(key=lambda item: item[0].area, reverse=True)
        return found

    def find_boxes(self, image: RGBImage) -> list[tuple[Box, float]]:
        """Boxes and scores of the faces in ``image``, largest first: the first attempt that finds
        any (in the calling thread)."""
        for kind, upsample in self.attempts_for(*image.shape[:2]):
            scan = self.scan(image, upsample)
            found = self.boxes(scan, self.hog(scan) if kind == "hog" else self.cnn([scan])[0])
            if found:
                return found
        return []

    def landmarks(self, image: RGBImage, box: Box) -> Landmarks:
        """The five landmarks of the face in ``box``."""
        with self._lock:
            shape = self._shape(image, to_dlib(box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def with_landmarks(self, image: RGBImage, boxes: list[tuple[Box, float]]) -> list[Detection]:
        """Each box with its landmarks (found on the box as the detector gave it), the box then
        clipped to the photo."""
        height, width = image.shape[:2]
        return [
            Detection(_clipped(box, width, height), score, self.landmarks(image, box)) for box, score in boxes
        ]

    def detect(self, image: RGBImage) -> list[Detection]:
        """Every face in ``image`` with box, score and landmarks, largest first."""
        return self.with_landmarks(image, self.find_boxes(image))


def _clipped(box: Box, width: int, height: int) -> Box:
    return Box(
        max(box.left, 0.0), max(box.top, 0.0), min(box.right, float(width)), min(box.bottom, float(height))
    )
