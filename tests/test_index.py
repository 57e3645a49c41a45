"""The gallery index: exact while small, IVF-PQ with re-ranking at scale, writes while serving, snapshots."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from faceid.engine.config import IndexConfig
from faceid.engine.domain.search import SearchParams
from faceid.engine.index import FaissGalleryIndex, GalleryIndex, SnapshotError

DIM = 128


def clustered(n: int, seed: int = 0, identities: int | None = None) -> np.ndarray:
    """Face-like data: identity centres with a tighter spread of faces around each."""
    rng = np.random.default_rng(seed)
    identities = identities or max(n // 4, 1)
    centres = rng.normal(0, 0.09, (identities, DIM)).astype(np.float32)
    return (centres[rng.integers(0, identities, n)] + rng.normal(0, 0.03, (n, DIM))).astype(np.float32)


def brute_force(
    gallery: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(queries[:, None, :] - gallery[None], axis=2)
    order = np.argsort(d, axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), ids[order]


def test_small_gallery_is_searched_exactly_with_euclidean_distances() -> None:
    x = clustered(500)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    index = FaissGalleryIndex(DIM)
    index.add(ids, x)
    q = clustered(20, seed=1)
    dist, found = index.search(q, 5)
    want_d, want_ids = brute_force(x, ids, q, 5)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-5)
    assert index.stats().kind == "exact"


def test_rows_are_padded_when_the_gallery_holds_fewer_than_k() -> None:
    index = FaissGalleryIndex(DIM)
    dist, ids = index.search(clustered(2), 3)  # nothing enrolled yet
    assert (ids == -1).all() and np.isinf(dist).all()
    index.add([1, 2], clustered(2))
    dist, ids = index.search(clustered(1, seed=3), 4)
    assert ids[0, 2:].tolist() == [-1, -1]
    assert np.isinf(dist[0, 2:]).all()


def test_removed_faces_are_never_returned_and_unknown_ids_are_ignored() -> None:
    x = clustered(300)
    index = FaissGalleryIndex(DIM)
    index.add(np.arange(300), x)
    assert index.remove([5, 6, 7, 10_000]) == 3
    assert index.count() == 297
    _, ids = index.search(x[[5, 6, 7]], 10)
    assert not np.isin(ids, [5, 6, 7]).any()


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        ([1], np.full((1, DIM), np.nan, np.float32), "NaN"),
        ([1], np.zeros((1, 64), np.float32), "shape"),
        ([1, 2], np.zeros((1, DIM), np.float32), "2 ids for 1"),
        ([1, 1], np.zeros((2, DIM), np.float32), "twice"),
    ],
)
def test_bad_adds_are_refused_and_change_nothing(ids: list[int], vectors: np.ndarray, message: str) -> None:
    index = FaissGalleryIndex(DIM)
    with pytest.raises(ValueError, match=message):
        index.add(ids, vectors)
    assert index.count() == 0


def test_an_id_cannot_be_added_twice() -> None:
    index = FaissGalleryIndex(DIM)
    index.add([4], clustered(1))
    with pytest.raises(ValueError, match="already"):
        index.add([4], clustered(1, seed=2))
    assert index.count() == 1


def test_k_out_of_bounds_is_refused() -> None:
    index = FaissGalleryIndex(DIM)
    with pytest.raises(ValueError, match="k must be"):
        index.search(clustered(1), 0)
    with pytest.raises(ValueError, match="k must be"):
        index.search(clustered(1), 100_000)


def test_nlist_grows_with_the_gallery_and_keeps_39_points_per_list() -> None:
    config = IndexConfig()
    for n in (100, 5_000, 60_000, 1_000_000, 10_000_000):
        nlist = config.nlist_for(n)
        assert nlist & (nlist - 1) == 0
        assert n >= 39 * nlist or nlist == 1
    assert config.nlist_for(1_000_000) == 4096


def test_removes_take_the_vectors_out_of_the_ivf_pq_index_itself() -> None:
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=2000, background=False))
    index.add(np.arange(3000), clustered(3000))
    assert index.stats().kind == "ivf_pq"
    assert index.remove(np.arange(0, 3000, 3)) == 1000
    stats = index.stats()
    assert stats.count == stats.indexed == 2000


def test_gallery_switches_to_ivf_pq_once_big_enough_and_stays_close_to_exact() -> None:
    x = clustered(8000)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=6000, background=False))
    index.add(np.arange(5000), x[:5000])
    assert index.stats().kind == "exact"
    index.add(np.arange(5000, 8000), x[5000:])
    stats = index.stats()
    assert stats.kind == "ivf_pq" and stats.nlist >= 16 and stats.trained_on == 8000
    q = x[:200] + np.random.default_rng(5).normal(0, 0.01, (200, DIM)).astype(np.float32)
    _, ann = index.search(q, 10)
    _, exact = index.search(q, 10, SearchParams(exact=True))
    assert np.mean(ann[:, 0] == exact[:, 0]) >= 0.95
    d_ann, _ = index.search(q, 1)
    d_exact, _ = brute_force(x, np.arange(8000), q, 1)
    np.testing.assert_allclose(d_ann[ann[:, 0] == exact[:, 0]], d_exact[ann[:, 0] == exact[:, 0]], rtol=2e-3)


def test_writes_made_during_background_training_are_caught_up() -> None:
    x = clustered(12_000)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=10_000, background=True))
    index.add(np.arange(10_000), x[:10_000])  # starts training in the background
    index.add(np.arange(10_000, 12_000), x[10_000:])
    removed = np.arange(0, 10_000, 10)
    index.remove(removed)
    _, ids = index.search(x[:50], 3)  # searches are served meanwhile
    assert (ids != -1).all()
    index.wait_for_training()
    assert index.stats().kind == "ivf_pq"
    live = np.setdiff1d(np.arange(12_000), removed)
    _, top = index.search(x[live], 1, SearchParams(nprobe=64, rerank_factor=8))
    assert np.mean(top[:, 0] == live) > 0.99
    _, top = index.search(x[removed], 10)
    assert not np.isin(top, removed).any()
    assert index.count() == len(live)


def test_explicit_retraining_on_request() -> None:
    x = clustered(3000)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=10**9))
    index.add(np.arange(3000), x)
    index.train(block=True)
    assert index.stats().kind == "ivf_pq"


def test_concurrent_searches_adds_and_removes_never_fail() -> None:
    x = clustered(6000)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=3000, background=True))
    index.add(np.arange(2000), x[:2000])
    errors: list[BaseException] = []
    removed: set[int] = set()

    def reader() -> None:
        try:
            for i in range(200):
                _, ids = index.search(x[i : i + 4], 5)
                assert ids.shape == (4, 5)
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            for start in range(2000, 6000, 200):
                index.add(np.arange(start, start + 200), x[start : start + 200])
                gone = np.arange(start - 2000, start - 1990)
                index.remove(gone)
                removed.update(gone.tolist())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    index.wait_for_training()
    assert not errors
    assert index.count() == 6000 - len(removed)
    _, ids = index.search(x[sorted(removed)], 5)
    assert not np.isin(ids, sorted(removed)).any()


@pytest.mark.parametrize("kind", ["exact", "ivf_pq"])
def test_snapshot_round_trip_gives_identical_answers(tmp_path: Path, kind: str) -> None:
    x = clustered(3000)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=10**9))
    index.add(np.arange(3000), x)
    index.remove([1, 2, 3])
    if kind == "ivf_pq":
        index.train(block=True)
    path = tmp_path / "gallery.index"
    index.save(path, seq=42)
    loaded, seq = FaissGalleryIndex.load(path)
    assert seq == 42 and loaded.count() == 2997 and loaded.stats().kind == kind
    q = clustered(30, seed=9)
    for a, b in zip(index.search(q, 5), loaded.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.index"]


def test_corrupt_or_truncated_snapshots_are_detected(tmp_path: Path) -> None:
    index = FaissGalleryIndex(DIM)
    index.add(np.arange(100), clustered(100))
    path = tmp_path / "g.index"
    index.save(path, seq=1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.index").write_bytes(bytes(data))
    (tmp_path / "short.index").write_bytes(path.read_bytes()[:-100])
    (tmp_path / "junk.index").write_bytes(b"not a snapshot")
    for name, message in (("flipped", "checksum"), ("short", "truncated"), ("junk", "not a faceid")):
        with pytest.raises(SnapshotError, match=message):
            FaissGalleryIndex.load(tmp_path / f"{name}.index")
    with pytest.raises(SnapshotError, match="cannot read"):
        FaissGalleryIndex.load(tmp_path / "missing.index")


def test_each_vector_carries_its_group_through_removal_training_and_snapshots(tmp_path: Path) -> None:
    x = clustered(3000)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=10**9))
    index.add(np.arange(3000), x, groups=np.arange(3000) // 3)
    index.remove(np.arange(0, 3000, 7))
    assert index.groups_of([1, 2, 3, 4, 7, 99_999]).tolist() == [0, 0, 1, 1, -1, -1]
    index.train(block=True)
    index.save(tmp_path / "g.index", seq=1)
    loaded, _ = FaissGalleryIndex.load(tmp_path / "g.index")
    ids = np.arange(3000)
    np.testing.assert_array_equal(loaded.groups_of(ids), index.groups_of(ids))
    with pytest.raises(ValueError, match="int32"):
        index.add([5000], clustered(1), groups=[2**40])


def test_a_snapshot_holds_no_removed_embedding(tmp_path: Path) -> None:
    x = clustered(500)
    index = FaissGalleryIndex(DIM)
    index.add(np.arange(500), x)
    removed = np.arange(0, 500, 5)
    index.remove(removed)
    index.save(tmp_path / "g.index", seq=3)
    data = (tmp_path / "g.index").read_bytes()
    for i in removed[:20]:
        assert x[i].astype(np.float16).tobytes() not in data
        assert x[i].tobytes() not in data
    assert x[1].astype(np.float16).tobytes() in data
    loaded, _ = FaissGalleryIndex.load(tmp_path / "g.index")
    _, ids = loaded.search(x[removed], 3)
    assert not np.isin(ids, removed).any() and loaded.count() == 400


def test_many_removals_compact_the_index() -> None:
    x = clustered(20_000)
    index = FaissGalleryIndex(DIM, IndexConfig(background=False))
    index.add(np.arange(20_000), x)
    index.remove(np.arange(15_000))
    assert index.store.size == index.count() == 5_000  # rebuilt without the removed rows
    _, ids = index.search(x[15_000:15_010], 1)
    assert ids[:, 0].tolist() == list(range(15_000, 15_010))


@pytest.mark.parametrize(("n", "kind"), [(500, "exact"), (3000, "ivf_pq")])
def test_bulk_load_builds_the_right_index_directly(n: int, kind: str) -> None:
    x = clustered(n)
    index = FaissGalleryIndex(DIM, IndexConfig(train_min=2000))
    index.bulk_load(np.arange(n) + 10, x, groups=np.arange(n) // 2)
    assert index.stats().kind == kind and index.count() == n
    _, ids, groups = index.search_with_groups(x[:20], 1, SearchParams(nprobe=64, rerank_factor=8))
    assert (ids[:, 0] == np.arange(20) + 10).mean() >= 0.95
    assert (groups[:, 0] == np.arange(20) // 2).mean() >= 0.95
    with pytest.raises(ValueError, match="empty"):
        index.bulk_load([1], x[:1])


def test_a_loaded_snapshot_with_removed_rows_keeps_ids_sorted_for_cheap_appends(tmp_path: Path) -> None:
    x = clustered(1000)
    index = FaissGalleryIndex(DIM)
    index.add(np.arange(1, 1001), x, groups=np.arange(1, 1001) * 10)
    index.remove([1, 2, 500, 501, 1000])
    index.save(tmp_path / "g.index", seq=1)
    loaded, _ = FaissGalleryIndex.load(tmp_path / "g.index")
    assert loaded.store._order is None  # no re-sort on every later add
    loaded.add([2000], clustered(1, seed=4), groups=[7])
    assert loaded.store._order is None
    assert loaded.groups_of([3, 499, 502, 999, 2000]).tolist() == [30, 4990, 5020, 9990, 7]
    assert loaded.groups_of([1, 2, 500, 501, 1000]).tolist() == [-1] * 5
    _, ids = loaded.search(x[[2, 498, 501, 998]], 1)
    assert ids[:, 0].tolist() == [3, 499, 502, 999]
    assert loaded.remove([500, 3]) == 1 and loaded.count() == 995


def test_the_default_rerank_factor_grows_with_the_square_root_of_the_gallery() -> None:
    config = IndexConfig(train_min=10**9, rerank_factor=8, rerank_reference=1000)
    index = FaissGalleryIndex(DIM, config)
    index.add(np.arange(500), clustered(500))
    assert index.default_rerank_factor() == 8  # never below the configured factor
    index.add(np.arange(500, 4000), clustered(3500, seed=1))
    assert index.default_rerank_factor() == 16  # 4× the reference: ×2
    index.add(np.arange(4000, 200_000), clustered(196_000, seed=2))
    assert index.default_rerank_factor() == 64  # capped


def test_an_id_added_again_after_its_removal_is_found_and_removed_again(tmp_path: Path) -> None:
    """SQLite hands out a deleted last row's id again: the new face must be searchable and erasable."""
    x = clustered(3)
    index = FaissGalleryIndex(DIM)
    index.add([1, 2], x[:2], groups=[10, 20])
    index.remove([2])
    index.add([2], x[2:], groups=[30])
    assert index.groups_of([2]).tolist() == [30] and index.contains([1, 2]).tolist() == [True, True]
    _, ids = index.search(x[2:], 1)
    assert ids[0, 0] == 2
    index.save(tmp_path / "g.index", seq=1)
    loaded, _ = FaissGalleryIndex.load(tmp_path / "g.index")
    for idx in (index, loaded):
        assert idx.remove([2]) == 1 and idx.count() == 1
        assert idx.contains([2]).tolist() == [False]
        _, ids = idx.search(x[2:], 1)
        assert ids[0, 0] == 1


def test_the_faiss_index_offers_what_the_engine_needs_of_an_index() -> None:
    """The engine's use of an index is the GalleryIndex protocol (mypy checks the assignment), so
    another backend can stand in for FAISS."""
    index: GalleryIndex = FaissGalleryIndex(DIM)
    index.add(np.array([4, 9]), clustered(2), np.array([1, 2]))
    assert index.contains(np.array([4, 5, 9])).tolist() == [True, False, True]
    assert index.remove(np.array([4])) == 1 and index.count() == 1
