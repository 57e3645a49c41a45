"""Embedding models faceid knows, with their calibrated decision thresholds.

An embedding is only comparable with embeddings of the same model *and*
version: the version names the network and everything around it that changes
the numbers (mirror averaging, unit length).  A gallery records the model and
version of its faces and refuses embeddings of another.

Thresholds are Euclidean distances between unit-length embeddings (0 = the same
vector, 2 = opposite; a match is a distance *below* the threshold), calibrated on
every impostor pair of LFW (87,307,271 pairs of photos of different people) with
``python -m faceid.benchmarks.calibrate`` (figures in BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EmbeddingModel:
    name: str
    version: str
    dim: int
    metric: str
    #: false-match rate → distance threshold (match when distance < threshold)
    thresholds: dict[float, float] = field(default_factory=dict)
    #: the false-match rate whose threshold is the default decision threshold
    default_fmr: float = 1e-3
    description: str = ""

    @property
    def default_threshold(self) -> float:
        return self.thresholds[self.default_fmr]

    @property
    def id(self) -> str:
        return f"{self.name}/{self.version}"


DLIB_RESNET_V1 = EmbeddingModel(
    name="dlib-resnet-v1",
    version="flip-unit",
    dim=128,
    metric="euclidean",
    thresholds={1e-2: 0.4240, 1e-3: 0.3785, 1e-4: 0.3379, 1e-5: 0.3003},
    default_fmr=1e-3,
    description=(
        "dlib's dlib_face_recognition_resnet_model_v1 in torch; 150×150 chips from dlib's 5-point "
        "alignment (padding 0.25); the mean of the chip's and its mirror's embeddings, scaled to unit "
        "length. True-match rate on LFW at FMR 1e-3: 0.961, at 1e-4: 0.820."
    ),
)

MODELS = {DLIB_RESNET_V1.id: DLIB_RESNET_V1}
