"""The face pipeline: photo → faces, each with box, landmarks, score and embedding.

decode (Pillow) → detect (dlib's MMOD CNN in torch, or HOG: :mod:`.detect`) → landmarks (dlib
5-point) → align (dlib chip, 150×150) → embed (dlib's ResNet in torch).  The engine
(:class:`~faceid.engine.service.engine.Engine`) runs these stages for every request that sends a
photo, with the CNN and the embedding batched across concurrent calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faceid.engine.config import PipelineConfig
from faceid.engine.domain.errors import InvalidImageError
from faceid.engine.domain.faces import Box, Detection, Face
from faceid.engine.vision.align import face_chips
from faceid.engine.vision.detect import FaceDetector
from faceid.engine.vision.embedder import Embedder, Embeddings
from faceid.engine.vision.image import RGBImage, decode_image
from faceid.engine.vision.resnet import CHIP_SIZE


class FacePipeline:
    """Owns the detector and the embedder; thread-safe; build one per process."""

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.detector = FaceDetector(self.config.detect)
        self.embedder = Embedder(self.config.embed)

    def decode(self, data: bytes) -> RGBImage:
        return decode_image(data, self.config.decode)

    def detect(self, data: bytes | RGBImage) -> list[Detection]:
        """Faces in a photo (encoded bytes or an RGB array), largest first, without embeddings."""
        image = self.decode(data) if isinstance(data, bytes) else data
        return self.detector.detect(image)

    def process(self, data: bytes | RGBImage) -> list[Face]:
        """Every face in one photo, largest first, with its embedding (decode → detect → align →
        embed, in the calling thread).  For tools and benchmarks in process; the engine runs the
        same stages with the embedding batched across calls (:meth:`Engine.faces`)."""
        image = self.decode(data) if isinstance(data, bytes) else data
        found = self.detector.detect(image)
        if not found:
            return []
        embeddings = self.embedder.embed(self.align(image, found))
        return [Face(d, e) for d, e in zip(found, embeddings, strict=True)]

    def detection_for_box(self, image: RGBImage, box: Box) -> Detection:
        """Landmarks for a face whose box the caller already knows (score ``nan``)."""
        return Detection(box, float("nan"), self.detector.landmarks(image, box))

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> np.ndarray:
        """Aligned 150×150 chips of ``detections`` in ``image``, ``(N, 150, 150, 3)`` uint8."""
        return face_chips(image, [(d.box, d.landmarks) for d in detections])

    def embed_chips(self, chips: Sequence[bytes]) -> Embeddings:
        """Embeddings of photos that are already aligned 150×150 face chips (no detection)."""
        arrays = []
        for n, data in enumerate(chips):
            image = self.decode(data)
            if image.shape[:2] != (CHIP_SIZE, CHIP_SIZE):
                raise InvalidImageError(
                    f"aligned chip {n} is {image.shape[1]}×{image.shape[0]}; aligned chips must be exactly "
                    f"{CHIP_SIZE}×{CHIP_SIZE} (dlib's get_face_chip(size=150, padding=0.25)); send the "
                    f"whole photo instead to have faceid detect and align it"
                )
            arrays.append(image)
        stacked = np.stack(arrays) if arrays else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        return self.embedder.embed(stacked)
