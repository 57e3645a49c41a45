"""The embedder's contract: shapes, batching and mirroring do not change what a face maps to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceid.engine.config import EmbedConfig
from faceid.engine.domain.errors import InvalidInputError
from faceid.engine.vision.embedder import Embedder, pick_device


def chip_paths(faces: Path) -> list[Path]:
    """Three aligned chips of each of five people."""
    return [p for d in sorted((faces / "dlib_johns5" / "images").iterdir()) for p in sorted(d.iterdir())[:3]]


@pytest.fixture(scope="module")
def chips(faces: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in chip_paths(faces)])


def test_batch_size_does_not_change_embeddings(chips: np.ndarray) -> None:
    one = Embedder(EmbedConfig(batch_size=1, flip=False)).embed(chips)
    many = Embedder(EmbedConfig(batch_size=32, flip=False)).embed(chips)
    assert np.abs(one - many).max() < 1e-4


def test_flip_averages_the_chip_and_its_mirror(chips: np.ndarray) -> None:
    plain = Embedder(EmbedConfig(flip=False, normalize=False))
    flipped = Embedder(EmbedConfig(flip=True, normalize=False)).embed(chips)
    expected = (plain.embed(chips) + plain.embed(np.ascontiguousarray(chips[:, :, ::-1]))) / 2
    assert np.abs(flipped - expected).max() < 1e-4


def test_same_person_is_nearer_than_another_person(chips: np.ndarray, faces: Path) -> None:
    names = [p.parent.name for p in chip_paths(faces)]
    emb = Embedder().embed(chips)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    same = np.array(names)[:, None] == np.array(names)[None]
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    assert all(same[i, j] for i, j in enumerate(nearest))
    assert np.median(d[same & np.isfinite(d)]) < 0.45 < np.median(d[~same])


def test_embeddings_are_128_float32_of_unit_length_by_default(chips: np.ndarray) -> None:
    emb = Embedder().embed(chips)
    assert emb.shape == (len(chips), 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    raw = Embedder(EmbedConfig(normalize=False)).embed(chips)
    assert np.all((np.linalg.norm(raw, axis=1) > 0.8) & (np.linalg.norm(raw, axis=1) < 2.0))


def test_no_chips_give_no_embeddings() -> None:
    assert Embedder().embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 112, 112, 3), np.uint8),
        np.zeros((2, 150, 150, 3), np.float32),
        np.zeros((150, 150, 3), np.uint8),
    ],
)
def test_wrong_chip_arrays_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="150, 150, 3"):
        Embedder().embed(bad)


def test_device_is_chosen_automatically_and_can_be_forced() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda")
