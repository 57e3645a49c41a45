"""The index on a GPU against the CPU paths, in one run: faiss-gpu's exact float16 replica,
the CPU IVF-PQ default operating point, and exact CPU search (the baseline).

Gallery: ``N`` synthetic faces from the distribution fitted to real embeddings
(``benchmarks/face_distribution.npz``); queries: a second face of ``--queries`` of
those identities.  Ground truth: exact float32 search on the CPU.  For each path:
build time, batched queries/s, one-query p50/p99, recall@1 and @10 against exact, and
the cost of adds and removes while serving.  Needs faiss with GPU support
(``pip install faceid[gpu]``) and a GPU; it says so and stops otherwise.

    python -m faceid.benchmarks.index_gpu --sizes 1000000,10000000 --queries 10000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from faceid.benchmarks.common import machine, write_json
from faceid.benchmarks.index_scale import latency, recall
from faceid.benchmarks.synthetic import FaceDistribution
from faceid.engine.config import IndexConfig
from faceid.engine.domain.search import SearchParams
from faceid.engine.index import FaissGalleryIndex
from faceid.engine.index.gpu import gpu_count


def make_gallery(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(gallery of n faces, one per identity; queries: another face of the first identities)."""
    model = FaceDistribution.load()
    pairs, _ = model.sample(queries, 2, seed=seed)
    rest, _ = model.sample(n - queries, 1, seed=seed + 1)
    return np.concatenate([pairs[0::2], rest]), np.ascontiguousarray(pairs[1::2])


def batched_qps(index: FaissGalleryIndex, queries: np.ndarray, k: int, params: SearchParams) -> float:
    index.search(queries[:64], k, params)  # warm-up
    t0 = time.perf_counter()
    index.search(queries, k, params)
    return len(queries) / (time.perf_counter() - t0)


def measure(
    name: str, index: FaissGalleryIndex, queries: np.ndarray, exact: np.ndarray, k: int, params: SearchParams
) -> dict[str, Any]:
    _, found = index.search(queries, k, params)
    p50, p99 = latency(lambda q: index.search(q, k, params), queries, 500)
    row = {"path": name, "qps": batched_qps(index, queries, k, params), "p50_ms": p50, "p99_ms": p99}
    row |= recall(found, exact)
    print(
        f"  {name:<28} {row['qps']:>10,.0f} q/s  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  "
        f"recall@1 {row['recall_at_1']:.4f}  @10 {row['recall_at_10']:.4f}"
    )
    return row


def faiss_gpu_alone(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[dict[str, Any], np.ndarray]:
    """The flat search straight through faiss-gpu, float16 and float32 storage (what the engine's
    wrapper costs, and what float16 saves); returns the float32 (exact) results too."""
    out = {}
    resources = faiss.StandardGpuResources()
    for name, fp16 in (("fp16", True), ("fp32", False)):
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = fp16
        flat = faiss.GpuIndexFlatL2(resources, gallery.shape[1], config)
        flat.add(gallery)
        flat.search(queries[:64], k)
        t0 = time.perf_counter()
        flat.search(queries, k)
        qps = len(queries) / (time.perf_counter() - t0)
        p50, p99 = latency(lambda q, f=flat: f.search(q, k), queries, 500)
        label = f"faiss-gpu alone, {name} flat"
        print(f"  {label:<28} {qps:>10,.0f} q/s  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms")
        out[name] = {"qps": qps, "p50_ms": p50, "p99_ms": p99}
        if not fp16:
            _, exact = flat.search(queries, k)
        del flat
    return out, exact


def writes_while_serving(gallery: np.ndarray) -> dict[str, float]:
    """Milliseconds for an add of 1,000 faces, a remove of 1,000, and a remove that forces the GPU
    replica to rebuild (on a gallery whose CPU side is exact: the GPU replica's own costs)."""
    n, dim = gallery.shape
    index = FaissGalleryIndex(dim, replace(IndexConfig(), device="cuda", background=False))
    index.bulk_load(np.arange(n), gallery, train=False)
    rng = np.random.default_rng(7)
    new = rng.standard_normal((1000, dim)).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    ids = np.arange(n, n + 1000)
    t0 = time.perf_counter()
    index.add(ids, new)
    t1 = time.perf_counter()
    index.remove(ids)
    t2 = time.perf_counter()
    index.remove(np.arange(0, 2000))  # past GpuReplica.STALE_MAX: a rebuild
    t3 = time.perf_counter()
    out = {
        "add_1000_ms": (t1 - t0) * 1e3,
        "remove_1000_ms": (t2 - t1) * 1e3,
        "remove_rebuild_ms": (t3 - t2) * 1e3,
    }
    print("  writes: " + ", ".join(f"{key} {value:.1f}" for key, value in out.items()))
    return out


def run_size(n: int, n_queries: int, k: int, exact_queries: int, cpu_max: int) -> dict[str, Any]:
    """Ground truth is exact float32 search on the GPU; exact CPU search is timed on
    ``exact_queries`` of the queries.  Galleries above ``cpu_max`` skip the CPU IVF-PQ paths
    (their build takes most of the run) and keep an exact CPU index beside the GPU replica."""
    print(f"\n== gallery {n:,} faces, {n_queries:,} queries, k {k}")
    t0 = time.perf_counter()
    gallery, queries = make_gallery(n, n_queries)
    print(f"  sampled in {time.perf_counter() - t0:.1f} s")
    out: dict[str, Any] = {"n": n, "queries": n_queries, "k": k}
    out["faiss_gpu_alone"], exact = faiss_gpu_alone(gallery, queries, k)
    some = queries[:exact_queries]
    t0 = time.perf_counter()
    faiss.knn(some, gallery, k)
    exact_qps = len(some) / (time.perf_counter() - t0)
    p50, p99 = latency(lambda q: faiss.knn(q, gallery, k), some, min(len(some), 100))
    print(f"  {'exact float32, CPU':<28} {exact_qps:>10,.0f} q/s  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms")
    out["exact_cpu"] = {"qps": exact_qps, "p50_ms": p50, "p99_ms": p99, "queries": len(some)}

    ids = np.arange(n)
    results = []
    for device in ("cuda", "cpu") if n <= cpu_max else ("cuda",):
        index = FaissGalleryIndex(gallery.shape[1], replace(IndexConfig(), device=device, background=False))
        t0 = time.perf_counter()
        index.on_progress = lambda stage, fraction, t0=t0: (
            print(f"    {stage} {fraction:.0%} at {time.perf_counter() - t0:.1f} s")
            if fraction in (0, 1)
            else None
        )
        index.bulk_load(ids, gallery, train=n <= cpu_max)
        build = time.perf_counter() - t0
        stats = index.stats()
        print(
            f"  build on {device}: {build:.1f} s "
            f"({stats.kind}, nlist {stats.nlist}; searches on {stats.device})"
        )
        row = measure(f"{device} index, default", index, queries, exact, k, SearchParams())
        row |= {"build_s": build, "device": stats.device, "gpu_bytes_per_face": stats.gpu_memory_bytes / n}
        results.append(row)
        if device == "cuda" and stats.kind == "ivf_pq":
            cpu_row = measure("  same index, CPU IVF-PQ", index, queries, exact, k, SearchParams(gpu=False))
            results.append(cpu_row | {"path": "cuda-trained index, CPU IVF-PQ"})
        del index
    out["paths"] = results
    out["writes"] = writes_while_serving(gallery)
    gpu = results[0]
    out["gpu_over_exact_cpu_qps"] = gpu["qps"] / exact_qps
    line = f"  ratios in this run: GPU/exact CPU {out['gpu_over_exact_cpu_qps']:.0f}× batched q/s"
    if len(results) == 3:
        cpu = results[2]
        out["gpu_over_cpu_qps"] = gpu["qps"] / cpu["qps"]
        line += f", GPU/CPU IVF-PQ {out['gpu_over_cpu_qps']:.1f}×"
        line += f", build {cpu['build_s'] / gpu['build_s']:.1f}× faster"
    print(line)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000", help="comma-separated gallery sizes")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--exact-queries", type=int, default=1000, help="queries timed on exact CPU search")
    ap.add_argument("--cpu-max", type=int, default=1_000_000, help="largest gallery that builds CPU IVF-PQ")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    if gpu_count() == 0:
        raise SystemExit("index_gpu: faiss sees no GPU here (needs faiss-gpu-cu12 and a CUDA device)")
    print(f"index_gpu: sizes {args.sizes}, {args.queries} queries, k {args.k}, faiss {faiss.__version__}")
    print(f"machine: {machine()}")
    payload: dict[str, Any] = {"benchmark": "index_gpu", "machine": machine()}
    payload["sizes"] = [
        run_size(int(n), args.queries, args.k, args.exact_queries, args.cpu_max)
        for n in args.sizes.split(",")
    ]
    write_json(args.out / "index_gpu.json", payload)
    return payload


if __name__ == "__main__":
    main()
