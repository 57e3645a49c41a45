"""Galleries whose embeddings span fewer dimensions than they have (dlib's span ~88 of 128) are
stored and searched in that subspace, with the same distances, and nothing outside it is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceid.engine.config import IndexConfig
from faceid.engine.domain.search import SearchParams
from faceid.engine.index import FaissGalleryIndex
from faceid.engine.index.subspace import Subspace

from .test_index import DIM, brute_force, clustered

RANK = 78  # not a multiple of 4: the subspace is rounded up to 80


def low_rank(n: int, seed: int = 0, rank: int = RANK) -> np.ndarray:
    """Unit vectors in one fixed ``rank``-dimensional subspace of R^128, clustered like faces."""
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((DIM, rank)))[0].T
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (max(n // 4, 1), rank))
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.4, (n, rank))
    x = x @ basis
    unit: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return unit


def test_the_fitted_subspace_has_the_data_rank_rounded_up_and_keeps_distances() -> None:
    x = low_rank(5000)
    sub = Subspace.fit(x, tol=1e-4)
    assert sub.rank == 80 and sub.basis is not None
    np.testing.assert_allclose(sub.basis @ sub.basis.T, np.eye(80), atol=1e-5)
    coords, beyond = sub.project(x[:100])
    assert beyond.max() < 1e-8
    apart = np.linalg.norm(coords[:50] - coords[50:], axis=1)
    np.testing.assert_allclose(apart, np.linalg.norm(x[:50] - x[50:100], axis=1), atol=1e-5)
    np.testing.assert_allclose(sub.lift(coords), x[:100], atol=1e-5)


def test_vectors_that_fill_every_dimension_keep_them_all() -> None:
    assert Subspace.fit(clustered(5000), tol=1e-4).basis is None
    assert Subspace.fit(low_rank(5000), tol=0).basis is None


def trained(n: int = 6000, **overrides: object) -> tuple[FaissGalleryIndex, np.ndarray]:
    x = low_rank(n)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=10**9, **overrides))  # type: ignore[arg-type]
    index.add(np.arange(n), x, groups=np.arange(n) // 4)
    index.train(block=True)
    return index, x


def test_a_trained_low_rank_gallery_stores_fewer_numbers_and_answers_true_distances() -> None:
    index, x = trained()
    stats = index.stats()
    assert stats.kind == "ivf_pq" and stats.rank == 80 and stats.pq_m == 40
    assert index.store.nbytes() == 6000 * (8 + 2 * 80 + 4 + 1)
    q = x[:300] + 0.3 * low_rank(300, seed=1)  # another photo of an enrolled face: still in the subspace
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    want_d, want_ids = brute_force(x, np.arange(6000), q, 5)
    d, ids = index.search(q, 5, SearchParams(exact=True))
    np.testing.assert_array_equal(ids[:, 0], want_ids[:, 0])
    np.testing.assert_allclose(d, want_d, atol=2e-3)
    d, ids = index.search(q, 5)
    assert np.mean(ids[:, 0] == want_ids[:, 0]) >= 0.95
    hit = ids[:, 0] == want_ids[:, 0]
    np.testing.assert_allclose(d[hit, 0], want_d[hit, 0], atol=2e-3)


def test_a_query_outside_the_subspace_gets_its_true_distance() -> None:
    index, x = trained()
    q = clustered(20, seed=3)  # full-rank: most of its length lies outside the gallery's subspace
    want_d, want_ids = brute_force(x, np.arange(6000), q, 3)
    d, ids = index.search(q, 3, SearchParams(exact=True))
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(d, want_d, atol=2e-3)


def test_a_face_added_outside_the_subspace_is_found_exactly_removed_and_snapshotted(tmp_path: Path) -> None:
    index, _ = trained()
    stranger = clustered(3, seed=7)
    stranger /= np.linalg.norm(stranger, axis=1, keepdims=True)
    index.add([10_000, 10_001, 10_002], stranger, groups=[5000, 5000, 5001])
    assert len(index.store.outside_rows) == 3 and index.count() == 6003
    d, ids, groups = index.search_with_groups(stranger, 1)
    assert ids[:, 0].tolist() == [10_000, 10_001, 10_002] and groups[:, 0].tolist() == [5000, 5000, 5001]
    np.testing.assert_allclose(d[:, 0], 0, atol=1e-6)  # kept whole, in float32
    near = stranger[:1] + np.float32(0.01)
    d, ids = index.search(near, 1)
    assert ids[0, 0] == 10_000
    np.testing.assert_allclose(d[0, 0], np.linalg.norm(near - stranger[0]), rtol=1e-5)
    assert index.remove([10_001]) == 1
    index.save(tmp_path / "g.index", seq=7)
    loaded, _ = FaissGalleryIndex.load(tmp_path / "g.index")
    assert loaded.stats().rank == 80 and loaded.count() == 6002
    _, ids = loaded.search(stranger, 3)
    assert ids[[0, 2], 0].tolist() == [10_000, 10_002] and 10_001 not in ids
    q = low_rank(50, seed=4)
    for a, b in zip(index.search(q, 5), loaded.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    stored, _, _ = loaded.store.items()
    assert 10_001 not in stored.tolist()


def test_many_faces_outside_the_subspace_refit_it_to_all_dimensions() -> None:
    index, _ = trained(6000, background=False)
    others = clustered(1200, seed=8)
    index.add(np.arange(20_000, 21_200), others)  # over 1 % and 1,000 outside: a retrain refits
    assert index.stats().rank == DIM and len(index.store.outside_rows) == 0
    _, ids = index.search(others[:20], 1, SearchParams(nprobe=64))
    assert (ids[:, 0] == np.arange(20_000, 20_020)).mean() >= 0.9


@pytest.mark.parametrize("tol", [0.0, 2e-4])
def test_retraining_keeps_every_face(tol: float) -> None:
    index, x = trained(subspace_tol=tol)
    index.remove(np.arange(0, 6000, 2))
    index.train(block=True)
    assert index.count() == 3000
    _, ids = index.search(x[1:200:2], 1, SearchParams(exact=True))
    assert ids[:, 0].tolist() == list(range(1, 200, 2))


def test_a_snapshot_of_a_subspace_gallery_holds_no_removed_face(tmp_path: Path) -> None:
    index, _ = trained()
    stranger = clustered(2, seed=11)
    index.add([10_000, 10_001], stranger)
    kept_coords = index.store.vectors[5].tobytes()  # float16 coordinates, as the snapshot stores them
    gone_coords = [index.store.vectors[row].tobytes() for row in (6, 7, 8)]
    index.remove([6, 7, 8, 10_001])
    index.save(tmp_path / "g.index", seq=1)
    data = (tmp_path / "g.index").read_bytes()
    assert kept_coords in data and stranger[0].tobytes() in data  # the check can see a stored face
    assert not any(c in data for c in gone_coords)
    assert stranger[1].tobytes() not in data
