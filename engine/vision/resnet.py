"""dlib's 128-D face recognition ResNet as a torch ``nn.Module``.

The architecture follows dlib's ``dnn_face_recognition_ex.cpp``; dlib's file does
not record where a skip connection starts, so the graph is written here and the
file only supplies weights, which :func:`load_dlib_weights` checks layer by layer
against the graph (kernel, stride, padding, channels) before copying them in.
Each ``affine_`` layer (dlib's frozen batch norm) is folded into the convolution
before it, so inference is conv → relu only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceid.engine.vision.dlib_format import DlibFormatError, DlibNet, Layer, read_net

#: (channels, number of blocks, first block downsamples), bottom to top.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)
CHIP_SIZE = 150
EMBEDDING_DIM = 128


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: sum over the larger shape, zero-padding the smaller at the end."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2], 0, c - x.shape[1]))

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """conv3×3 → relu → conv3×3, added to the input (average-pooled when downsampling)."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        # dlib pads by nr/2 only at stride 1; a stride-2 convolution has no padding.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=0 if downsample else 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_prev(y, skip))


class DlibResNet(nn.Module):
    """Maps normalised 150×150 RGB chips ``(N, 3, 150, 150)`` to 128-D embeddings."""

    mean: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, 2, padding=0)
        blocks: list[ResidualBlock] = []
        channels = 32
        for out_channels, count, downsample in STAGES:
            for i in range(count):
                blocks.append(ResidualBlock(channels, out_channels, downsample and i == 0))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, EMBEDDING_DIM, bias=False)
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))

    def normalise(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 or float RGB in [0, 255], NCHW → dlib's input scaling ``(x − mean) / 256``."""
        return (chips.to(self.mean.dtype) - self.mean) / 256.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        out: torch.Tensor = self.fc(x)
        return out

    def convolutions(self) -> Iterator[nn.Conv2d]:
        """Convolutions in dlib's bottom-up file order."""
        yield self.stem
        for block in self.blocks:
            assert isinstance(block, ResidualBlock)
            yield block.conv1
            yield block.conv2


def _folded(conv_layer: Layer, affine_layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    gamma = affine_layer.params["gamma"]
    beta = affine_layer.params["beta"]
    weight = conv_layer.params["weight"] * gamma[:, None, None, None]
    bias = conv_layer.params["bias"] * gamma + beta
    return weight, bias


def _check_conv(conv: nn.Conv2d, layer: Layer, index: int) -> None:
    a = layer.attrs
    expected = (conv.out_channels, *conv.kernel_size, *conv.stride, *conv.padding)
    found = (a["num_filters"], a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["pad_y"], a["pad_x"])
    shape = tuple(layer.params["weight"].shape)
    if found != expected or shape != tuple(conv.weight.shape):
        raise DlibFormatError(
            f"convolution {index}: file has filters/kernel/stride/padding {found} and weights {shape}, "
            f"the architecture expects {expected} and {tuple(conv.weight.shape)}"
        )


def load_dlib_weights(model: DlibResNet, net: DlibNet) -> None:
    """Copy a parsed dlib network into ``model``, folding each affine into its convolution."""
    kinds = [layer.kind for layer in net.layers]
    convs = [i for i, k in enumerate(kinds) if k.startswith("con_")]
    modules = list(model.convolutions())
    if len(convs) != len(modules):
        raise DlibFormatError(f"file has {len(convs)} convolutions, the architecture {len(modules)}")
    with torch.no_grad():
        for n, (i, conv) in enumerate(zip(convs, modules, strict=True)):
            if kinds[i + 1] != "affine_":
                raise DlibFormatError(f"convolution {n} is not followed by an affine layer")
            _check_conv(conv, net.layers[i], n)
            weight, bias = _folded(net.layers[i], net.layers[i + 1])
            conv.weight.copy_(torch.from_numpy(weight))
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(bias))
        fc = net.layers[-1]
        if fc.kind != "fc_2" or fc.params["weight"].shape != tuple(model.fc.weight.shape):
            raise DlibFormatError("the top layer is not a 256→128 fully connected layer")
        model.fc.weight.copy_(torch.from_numpy(fc.params["weight"]))
        mean = np.asarray(net.input.attrs["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        model.mean.copy_(torch.from_numpy(mean))


def load_resnet(path: str | Path) -> DlibResNet:
    """Build the network and load dlib's weights from ``path``; returned in eval mode."""
    model = DlibResNet()
    load_dlib_weights(model, read_net(path))
    return model.eval()
