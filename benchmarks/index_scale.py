"""Gallery index at million scale: recall, identity rank-1, throughput, latency, memory.

Gallery: N synthetic faces (``synthetic.py``, fitted to LFW) plus one real photo
of each LFW person; queries: every other LFW photo.  Ground truth: exact search
(FAISS ``IndexFlatL2``), which is also the baseline for throughput.  For each
index variant (a FAISS factory string run through faceid's ``FaissGalleryIndex``,
float16 exact re-ranking included) and operating point (nprobe × re-rank factor):

* recall@1 — the top result is exact search's top result;
* recall@10 — overlap of the top 10 with exact search's top 10;
* identity rank-1 — the top result is a photo of the query's person;
* batched queries/s (all queries in one call), single-query p50/p99 latency;
* bytes per face in RAM (serialized index + re-rank store), train and add time.

    python -m faceid.benchmarks.index_scale [--n 1000000] [--variants ...] [--out results/]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from faceid.benchmarks.common import machine, write_json
from faceid.benchmarks.synthetic import LfwEmbeddings, embed_lfw, fit
from faceid.engine.config import IndexConfig
from faceid.engine.domain.search import SearchParams
from faceid.engine.index import FaissGalleryIndex

#: A variant is a FAISS factory string ({nlist}, {pq_m} filled in), optionally followed by
#: ``;field=value`` overrides of :class:`IndexConfig`.  The second is the session-3 default
#: (all 128 dimensions, residual PQ64), kept for the ratio in the same run.
DEFAULT_VARIANTS = ["IVF{nlist},PQ{pq_m}x4fs", "IVF{nlist},PQ64x4fs;subspace_tol=0;by_residual=1"]


def variant_config(variant: str) -> IndexConfig:
    """The :class:`IndexConfig` of a variant string (see ``DEFAULT_VARIANTS``)."""
    factory, *overrides = variant.split(";")
    config = replace(IndexConfig(), factory=factory, train_min=10**12, device="cpu")
    for item in overrides:
        name, value = item.split("=", 1)
        kind = type(getattr(config, name))
        config = replace(config, **{name: kind(int(value)) if kind is bool else kind(value)})
    return config


def make_gallery(
    lfw: LfwEmbeddings, n_synthetic: int, faces_per_identity: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery vectors, gallery person (-1: synthetic), query vectors, query person).

    Gallery id i is row i: the first photo of each LFW person, then the distractors.
    """
    first = np.unique(lfw.labels, return_index=True)[1]
    rest = np.setdiff1d(np.arange(len(lfw.labels)), first)
    model = fit(lfw.vectors, lfw.labels)
    synth, _ = model.sample(-(-n_synthetic // faces_per_identity), faces_per_identity, seed=1)
    gallery = np.concatenate([lfw.vectors[first], synth[:n_synthetic]]).astype(np.float32)
    person = np.concatenate([lfw.labels[first], np.full(n_synthetic, -1)])
    return gallery, person, lfw.vectors[rest].astype(np.float32), lfw.labels[rest]


def latency(search: Any, queries: np.ndarray, n: int) -> tuple[float, float]:
    """p50 and p99 in ms of one-query searches."""
    times = []
    for q in queries[:n]:
        t0 = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def recall(found: npt.NDArray[np.int64], exact: npt.NDArray[np.int64]) -> dict[str, float]:
    """recall@1 and recall@k (k = the columns of ``exact``) against exact search's ids."""
    r10 = np.mean([len(np.intersect1d(a, b)) / exact.shape[1] for a, b in zip(found, exact, strict=True)])
    return {"recall_at_1": float(np.mean(found[:, 0] == exact[:, 0])), "recall_at_10": float(r10)}


def score(
    found: npt.NDArray[np.int64], exact: npt.NDArray[np.int64], person: np.ndarray, qperson: np.ndarray
) -> dict[str, float]:
    top = found[:, 0]
    identity = np.where(top >= 0, person[np.maximum(top, 0)], -2) == qperson
    return {**recall(found, exact), "identity_rank1": float(np.mean(identity))}


def run_exact(
    gallery: np.ndarray, queries: np.ndarray, k: int, single: int
) -> tuple[np.ndarray, dict[str, Any]]:
    t0 = time.perf_counter()
    _, ids = faiss.knn(queries, gallery, k)  # exact, without copying the gallery
    qps = len(queries) / (time.perf_counter() - t0)
    p50, p99 = latency(lambda q: faiss.knn(q, gallery, k), queries, min(single, 100))
    return ids, {"qps": qps, "p50_ms": p50, "p99_ms": p99, "bytes_per_face": 4 * gallery.shape[1]}


def run_variant(
    factory: str,
    gallery: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    person: np.ndarray,
    qperson: np.ndarray,
    nprobes: list[int],
    reranks: list[int],
    k: int,
    single: int,
) -> dict[str, Any]:
    config = variant_config(factory)
    index = FaissGalleryIndex(gallery.shape[1], config)
    t_store = 0.0
    stages: dict[str, float] = {}

    def progress(stage: str, fraction: float) -> None:
        stages.setdefault(stage, time.perf_counter())
        print(f"  {factory}: {stage} {fraction:.0%}", end="\r", flush=True)

    index.on_progress = progress
    t0 = time.perf_counter()
    index.bulk_load(np.arange(len(gallery)), gallery, train=True)
    t_total = time.perf_counter() - t0
    t_train = stages.get("add", time.perf_counter()) - stages.get("train", t0)
    stats = index.stats()
    index_bytes = len(faiss.serialize_index(index._index))
    bytes_per_face = (index_bytes + index.store.nbytes()) / len(gallery)
    print(
        f"\n{factory.format(nlist=stats.nlist, pq_m=stats.pq_m)}: nlist {stats.nlist}, rank {stats.rank}, "
        f"train {t_train:.1f} s, "
        f"train+add {t_total:.1f} s, {bytes_per_face:.0f} bytes/face with re-rank store"
    )
    points = []
    for nprobe in nprobes:
        for rerank in reranks:
            params = SearchParams(nprobe=nprobe, rerank_factor=rerank)
            t0 = time.perf_counter()
            _, found = index.search(queries, k, params)
            qps = len(queries) / (time.perf_counter() - t0)
            p50, p99 = latency(lambda q, p=params: index.search(q, k, p), queries, single)
            point = {
                "nprobe": nprobe,
                "rerank_factor": rerank,
                "qps": qps,
                "p50_ms": p50,
                "p99_ms": p99,
                **score(found, exact, person, qperson),
            }
            points.append(point)
            print(
                f"  nprobe {nprobe:>4} rerank ×{rerank:<2}: recall@1 {point['recall_at_1']:.4f} "
                f"@10 {point['recall_at_10']:.4f} id-rank1 {point['identity_rank1']:.4f} "
                f"{qps:9.0f} q/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
            )
    return {
        "factory": factory.format(nlist=stats.nlist, pq_m=stats.pq_m),
        "nlist": stats.nlist,
        "rank": stats.rank,
        "train_s": t_train,
        "build_s": t_total,
        "store_add_s": t_store,
        "bytes_per_face": bytes_per_face,
        "index_bytes": index_bytes,
        "points": points,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for v in results["variants"]:
        for rerank in sorted({p["rerank_factor"] for p in v["points"]}):
            pts = [p for p in v["points"] if p["rerank_factor"] == rerank]
            ax.plot(
                [p["qps"] for p in pts],
                [p["recall_at_1"] for p in pts],
                marker="o",
                label=f"{v['factory']} re-rank ×{rerank}",
            )
            for p in pts:
                ax.annotate(
                    str(p["nprobe"]),
                    (p["qps"], p["recall_at_1"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
    e = results["exact"]
    ax.scatter([e["qps"]], [1.0], marker="*", s=120, color="black", label="exact (Flat)")
    ax.set_xscale("log")
    ax.set_xlabel("queries/s (batched, 2 cores)")
    ax.set_ylabel("recall@1 against exact search")
    ax.set_title(f"{results['gallery_size']:,} faces; labels = nprobe")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic distractor faces")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="FAISS factory strings ({nlist})")
    ap.add_argument("--nprobes", default="32,64,128,256", help="comma-separated")
    ap.add_argument("--reranks", default="4", help="comma-separated re-rank factors")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=0, help="use only the first N queries (0: all)")
    ap.add_argument("--single", type=int, default=300, help="one-at-a-time queries for latency")
    ap.add_argument("--cache", type=Path, default=Path("results/lfw_embeddings.npz"))
    ap.add_argument("--lfw-limit", type=int, default=0, help="use only the first N LFW images (quick runs)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    nprobes = [int(x) for x in args.nprobes.split(",")]
    reranks = [int(x) for x in args.reranks.split(",")]

    lfw = embed_lfw(cache=args.cache, limit=args.lfw_limit)
    gallery, person, queries, qperson = make_gallery(lfw, args.n)
    if args.queries:
        queries, qperson = queries[: args.queries], qperson[: args.queries]
    print(
        f"index_scale: gallery {len(gallery):,} faces "
        f"({args.n:,} synthetic + {len(gallery) - args.n:,} LFW), "
        f"{len(queries):,} queries, k {args.k}, nprobes {nprobes}, re-rank {reranks}, "
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads"
    )
    print(f"machine: {machine()}")
    exact_ids, exact = run_exact(gallery, queries, args.k, args.single)
    exact.update(score(exact_ids, exact_ids, person, qperson))
    no_distractors = float(
        np.mean(
            person[: len(gallery) - args.n][faiss.knn(queries, gallery[: len(gallery) - args.n], 1)[1][:, 0]]
            == qperson
        )
    )
    exact["identity_rank1_without_distractors"] = no_distractors
    print(
        f"exact: {exact['qps']:.0f} q/s, p50 {exact['p50_ms']:.2f} ms, p99 {exact['p99_ms']:.2f} ms, "
        f"identity rank-1 {exact['identity_rank1']:.4f} ({no_distractors:.4f} without distractors)"
    )
    results: dict[str, Any] = {
        "benchmark": "index_scale",
        "gallery_size": len(gallery),
        "synthetic": args.n,
        "queries": len(queries),
        "k": args.k,
        "exact": exact,
        "variants": [],
    }
    for factory in args.variants:
        v = run_variant(
            factory, gallery, queries, exact_ids, person, qperson, nprobes, reranks, args.k, args.single
        )
        for p in v["points"]:
            p["speedup_vs_exact"] = p["qps"] / exact["qps"]
        results["variants"].append(v)
    results["machine"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"index_scale_{args.n}.json", results)
    plot(results, args.out / f"index_scale_{args.n}.png")
    return results


if __name__ == "__main__":
    main()
