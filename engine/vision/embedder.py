"""The face embedder: aligned chips in, 128-D embeddings out, batched on CPU or GPU.

Runs :class:`~faceid.engine.vision.resnet.DlibResNet` under ``torch.inference_mode``:
channels-last layout (faster convolutions on CPU and GPU), fp16 on CUDA by
default (checked against fp32 in the tests and benchmarks), and optionally the
average of each chip's embedding and its mirror image's, scaled to unit length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from faceid.engine.config import EmbedConfig
from faceid.engine.domain.errors import InvalidInputError
from faceid.engine.vision.resnet import CHIP_SIZE, EMBEDDING_DIM, DlibResNet, load_resnet
from faceid.engine.vision.weights import RESNET_FILE, model_file

Embeddings = npt.NDArray[np.float32]
#: Aligned face chips, ``(N, 150, 150, 3)`` uint8 RGB.
Chips = npt.NDArray[np.uint8]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when available (``auto``), else the CPU; or the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[precision]


class Embedder:
    """Maps ``(N, 150, 150, 3)`` uint8 RGB chips to ``(N, 128)`` float32 embeddings."""

    dim = EMBEDDING_DIM

    def __init__(self, config: EmbedConfig | None = None, weights: str | Path | None = None) -> None:
        self.config = config or EmbedConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.config.precision, self.device)
        model: DlibResNet = load_resnet(weights or model_file(RESNET_FILE))
        model = model.to(self.device, dtype=self.dtype)
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def forward_batch(self) -> int:
        """Images per forward pass: the configured batch size, or the device's best."""
        if self.config.batch_size:
            return self.config.batch_size
        return 1024 if self.device.type == "cuda" else 32

    def _forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = chips.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        if self.config.flip:
            x = torch.cat([x, x.flip(3)])
        x = self.model.normalise(x).contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = self.model(x).float()
        if self.config.flip:
            n = chips.shape[0]
            out = (out[:n] + out[n:]) / 2
        if self.config.normalize:
            out = torch.nn.functional.normalize(out, dim=1)
        return out

    def embed(self, chips: Chips) -> Embeddings:
        """Embeddings of aligned chips, in network batches of ``forward_batch`` images."""
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise InvalidInputError(
                f"aligned chips must be uint8 RGB of shape (N, {CHIP_SIZE}, {CHIP_SIZE}, 3); "
                f"got {chips.dtype} {chips.shape}"
            )
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = max(1, self.forward_batch // 2) if self.config.flip else self.forward_batch
        out = np.empty((len(chips), self.dim), dtype=np.float32)
        source = torch.from_numpy(np.ascontiguousarray(chips))
        with torch.inference_mode():
            for start in range(0, len(chips), step):
                batch = source[start : start + step]
                out[start : start + len(batch)] = self._forward(batch).cpu().numpy()
        return out
