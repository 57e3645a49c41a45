"""The index on a GPU: an exact float16 replica that follows adds, removes, retraining and
snapshots.  These run where faiss has GPU support and sees a GPU, and skip elsewhere."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from faceid.engine.config import IndexConfig
from faceid.engine.domain.search import SearchParams
from faceid.engine.index import FaissGalleryIndex
from faceid.engine.index.gpu import GpuReplica, gpu_count

from .test_index import DIM, brute_force, clustered

needs_gpu = pytest.mark.skipif(
    gpu_count() == 0, reason="faiss sees no GPU here (faiss-cpu, or no CUDA device)"
)
GPU = IndexConfig(device="cuda", gpu_min=1_000, background=False)


def test_asking_for_a_gpu_where_there_is_none_is_a_clear_error() -> None:
    if gpu_count():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no GPU"):
        FaissGalleryIndex(DIM, IndexConfig(device="cuda"))
    assert FaissGalleryIndex(DIM, IndexConfig(device="auto")).stats().device == "cpu"


@needs_gpu
def test_galleries_move_to_the_gpu_at_gpu_min_and_stay_exact() -> None:
    x = clustered(3_000)
    ids = np.arange(3_000, dtype=np.int64) * 3 + 1
    index = FaissGalleryIndex(DIM, GPU)
    index.add(ids[:500], x[:500])
    assert index.stats().device == "cpu"
    index.add(ids[500:], x[500:])
    assert index.stats().device == "cuda:0"
    q = clustered(50, seed=1)
    dist, found = index.search(q, 10)
    want_d, want_ids = brute_force(x, ids, q, 10)
    assert np.mean(found[:, 0] == want_ids[:, 0]) > 0.95  # float16 storage: near-ties may swap
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, want_ids, strict=True)]) > 9.5
    np.testing.assert_allclose(dist, want_d, atol=2e-3)


@needs_gpu
def test_removed_faces_never_come_back_from_the_gpu_before_or_after_its_rebuild() -> None:
    x = clustered(5_000)
    index = FaissGalleryIndex(DIM, GPU)
    index.add(np.arange(5_000), x)
    gone = np.arange(0, 5_000, 7)[:100]
    index.remove(gone)
    _, found = index.search(x[gone], 10)
    assert not np.isin(found, gone).any()
    assert (found >= 0).all()
    more = np.arange(1, 5_000, 2)[: GpuReplica.STALE_MAX + 1]  # past STALE_MAX: the replica rebuilds
    index.remove(more)
    _, found = index.search(x[more[:200]], 10)
    assert not np.isin(found, np.concatenate([gone, more])).any()
    live = np.setdiff1d(np.arange(5_000), np.concatenate([gone, more]))
    _, want = brute_force(x[live], live, x[live[:50]], 1)
    _, top = index.search(x[live[:50]], 1)
    np.testing.assert_array_equal(top, want)


@needs_gpu
def test_gpu_and_cpu_paths_agree_within_pq_noise_after_training_on_the_gpu() -> None:
    x = clustered(20_000, identities=5_000)
    index = FaissGalleryIndex(DIM, replace(GPU, train_min=10_000))
    index.add(np.arange(20_000), x)
    assert index.stats().kind == "ivf_pq"
    q = x[:500] + np.random.default_rng(3).normal(0, 0.01, (500, DIM)).astype(np.float32)
    _, on_gpu = index.search(q, 10)
    _, on_cpu = index.search(q, 10, SearchParams(gpu=False))
    _, exact = brute_force(x, np.arange(20_000), q, 1)
    assert np.mean(on_gpu[:, 0] == exact[:, 0]) > 0.99
    assert np.mean(on_cpu[:, 0] == on_gpu[:, 0]) > 0.95


@needs_gpu
def test_a_snapshot_loads_back_onto_the_gpu(tmp_path: Path) -> None:
    x = clustered(4_000)
    index = FaissGalleryIndex(DIM, GPU)
    index.add(np.arange(4_000), x)
    index.remove([1, 2, 3])
    index.save(tmp_path / "g.idx", seq=9)
    loaded, seq = FaissGalleryIndex.load(tmp_path / "g.idx", GPU)
    assert seq == 9
    assert loaded.stats().device == "cuda:0"
    q = clustered(30, seed=5)
    np.testing.assert_array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
