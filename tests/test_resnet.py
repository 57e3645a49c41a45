"""The torch port of dlib's ResNet: architecture facts, and parity with dlib itself (the oracle)."""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest
import torch
from PIL import Image

from faceid.engine.config import EmbedConfig
from faceid.engine.vision.embedder import Embedder
from faceid.engine.vision.resnet import DlibResNet, add_prev, load_resnet
from faceid.engine.vision.weights import LANDMARKS_5_FILE, RESNET_FILE, model_file


def test_add_prev_zero_pads_the_smaller_input_at_the_end() -> None:
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 2.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert torch.all(out[:, :2, :3, :3] == 3.0)
    assert torch.all(out[:, 2:] == 2.0)
    assert torch.all(out[:, :, 3, :] == 2.0)


def test_network_maps_a_batch_of_chips_to_128_numbers_each() -> None:
    model = DlibResNet().eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 150, 150))
    assert out.shape == (2, 128)


def dlib_chips(paths: list[Path]) -> list[np.ndarray]:
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(str(model_file(LANDMARKS_5_FILE)))
    chips = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        rects = detector(image, 1)
        if len(rects):
            chips.append(dlib.get_face_chip(image, shape(image, rects[0]), 150, 0.25))
    return chips


def test_torch_embeddings_match_dlibs_descriptor_on_real_faces(faces: Path) -> None:
    paths = sorted((faces / "lfw" / "images").glob("A*/*.jpg"))[:12]
    paths += sorted((faces / "deepface_unit13" / "images").glob("*/001.jpg"))[:6]
    chips = dlib_chips(paths)
    chips += [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((faces / "dlib_johns5" / "images").glob("*/*"))[:6]
    ]
    assert len(chips) >= 20
    net = dlib.face_recognition_model_v1(str(model_file(RESNET_FILE)))
    expected = np.array([np.array(net.compute_face_descriptor(c)) for c in chips], dtype=np.float32)
    ours = Embedder(
        EmbedConfig(device="cpu", precision="fp32", flip=False, normalize=False, batch_size=8)
    ).embed(np.stack(chips))
    assert np.abs(ours - expected).max() <= 1e-4


def test_loading_checks_each_layer_against_the_architecture() -> None:
    model = load_resnet(model_file(RESNET_FILE))
    assert not model.training
    assert model.mean.flatten().tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-3)
