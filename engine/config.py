"""Configuration of the face pipeline, in one typed place.

Every knob has a default chosen from a benchmark (see BENCHMARKS.md) and a
range check, so a bad value fails at start-up with a message, not mid-request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["auto", "fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class DecodeConfig:
    """Limits applied to incoming photos before any pixel is decoded."""

    #: Refuse photos whose header declares more pixels than this (decompression bombs).
    max_pixels: int = 50_000_000
    #: Refuse photos longer than this many times their width, or wider than this times their height.
    max_aspect_ratio: float = 20.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")
        if self.max_aspect_ratio < 1:
            raise ValueError("max_aspect_ratio must be at least 1")


@dataclass(frozen=True)
class DetectConfig:
    """dlib's HOG detector: its scan window is 80×80 px, so upsampling finds smaller faces."""

    #: Times the photo is upsampled ×2 before detection (1 finds faces down to about 40 px).
    upsample: int = 1
    #: Cap on the detector's working image (pixels): larger photos are scaled down for the
    #: scan only; landmarks and chips still come from the full-resolution photo.
    max_detect_pixels: int = 2_500_000
    #: Faces narrower than this (pixels of the original photo) are dropped.
    min_face_size: int = 20
    #: Added to the HOG decision threshold; negative finds more (and falser) faces.
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.upsample <= 3:
            raise ValueError("upsample must be between 0 and 3")
        if self.max_detect_pixels < 80 * 80:
            raise ValueError("max_detect_pixels must be at least 6400 (one 80×80 scan window)")
        if self.min_face_size < 0:
            raise ValueError("min_face_size must be non-negative")


@dataclass(frozen=True)
class EmbedConfig:
    """The torch embedder."""

    #: "auto" picks CUDA when available, else the CPU; or any torch device string.
    device: str = "auto"
    #: "auto" is fp16 on CUDA (embeddings within cosine 0.9999 of fp32) and fp32 on the CPU.
    precision: Precision = "auto"
    #: Images per network forward pass (a face and its mirror count as two); 0 = automatic:
    #: 32 on the CPU (larger batches spill the caches and run slower), 1024 on CUDA.
    batch_size: int = 0
    #: Average the embeddings of each chip and its mirror image (more accurate, twice the work).
    flip: bool = True
    #: Scale each embedding to unit length, so that Euclidean distance ranks as cosine does
    #: (more accurate on LFW than dlib's raw vectors; distances then lie in [0, 2]).
    normalize: bool = True
    #: CPU threads for torch; 0 keeps torch's default.
    threads: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.batch_size <= 4096:
            raise ValueError("batch_size must be between 0 (automatic) and 4096")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError("precision must be auto, fp32, fp16 or bf16")


@dataclass(frozen=True)
class PipelineConfig:
    decode: DecodeConfig = DecodeConfig()
    detect: DetectConfig = DetectConfig()
    embed: EmbedConfig = EmbedConfig()
