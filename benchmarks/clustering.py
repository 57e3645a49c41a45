"""Clustering faces into people: methods compared on LFW through the API, and the engine's at scale.

**LFW** (``--lfw``, all 13,233 photos of 5,749 people, 4,069 of whom have one photo): a server is
spawned; every photo goes through Embed and its central face's embedding is kept (a photo where no
face is found stays a singleton of its own: a failure for anyone with other photos, as a user would
see it).  Then, on those embeddings:

* **ClusterFaces** through gRPC, the server's defaults: what a caller gets;
* in process, on the same ``--neighbours``-nearest graph (exact), each method over a sweep of its
  parameter: connected components of the edges shorter than a distance; dlib's Chinese whispers
  on the same edges; Leiden (leidenalg, CPM on similarity weights; when installed); average linkage
  with one threshold; and the engine's size-aware average linkage on a grid of (strict, loose).

Each is scored by pairwise precision / recall / F (over pairs of photos) and BCubed precision /
recall / F (per photo: the share of its cluster that is its person, and of its person that is in
its cluster), with the number of clusters against the number of people.  A plot shows every sweep
point's pairwise F against its BCubed F.

**Scale** (``--scale N``): ``N`` synthetic faces from the generator fitted to real embeddings
(:mod:`faceid.benchmarks.synthetic`; ``--per`` faces per identity), indexed as a gallery is (the
engine's FAISS index, IVF-PQ, trained), each face searched for its ``--neighbours`` nearest
(batched, the gallery's default search settings), then clustered by the engine's method: seconds
of each phase, peak memory, and the quality figures against the generator's identities.

    python -m faceid.benchmarks.clustering [--lfw] [--scale 1000000] [--neighbours 30] \\
        [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import resource
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceid.benchmarks.common import Progress, faces_dir, machine, write_json
from faceid.benchmarks.detector_verification import embed_all
from faceid.client.client import FaceIdClient
from faceid.engine.cluster.linkage import Linkage, average_linkage, neighbour_pairs
from faceid.engine.config import ClusterConfig, IndexConfig
from faceid.engine.index import FaissBackend, FaissGalleryIndex
from faceid.server.app import spawn

Labels = npt.NDArray[np.int64]


# ---- scores -----------------------------------------------------------------------------------
def _contingency(truth: Sequence[Any], found: Labels) -> tuple[Labels, Labels, Labels]:
    """For each item: the size of its (person ∩ cluster) cell, of its person, of its cluster."""
    _, person = np.unique(np.asarray(truth), return_inverse=True)
    _, cluster = np.unique(found, return_inverse=True)
    _, cell_of, cells = np.unique(
        person.astype(np.int64) * (cluster.max() + 1) + cluster, return_inverse=True, return_counts=True
    )
    return cells[cell_of], np.bincount(person)[person], np.bincount(cluster)[cluster]


def pairwise(truth: Sequence[Any], found: Labels) -> tuple[float, float, float]:
    """Precision, recall and F over pairs of items: same person and same cluster.  Each item is
    in ``size − 1`` pairs of its cell (person, cluster); summed over items that counts each pair twice,
    on every side alike."""
    cell, person, cluster = _contingency(truth, found)
    together, same, joined = float((cell - 1).sum()), float((person - 1).sum()), float((cluster - 1).sum())
    p = together / joined if joined else 1.0
    r = together / same if same else 1.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def bcubed(truth: Sequence[Any], found: Labels) -> tuple[float, float, float]:
    """BCubed precision, recall and F (Amigó et al. 2009), averaged over items."""
    cell, person, cluster = _contingency(truth, found)
    p = float(np.mean(cell / cluster))
    r = float(np.mean(cell / person))
    return p, r, 2 * p * r / (p + r)


def scores(truth: Sequence[Any], found: Labels) -> dict[str, float]:
    pp, pr, pf = pairwise(truth, found)
    bp, br, bf = bcubed(truth, found)
    return {
        "clusters": len(np.unique(found)),
        "pairwise_precision": pp,
        "pairwise_recall": pr,
        "pairwise_f": pf,
        "bcubed_precision": bp,
        "bcubed_recall": br,
        "bcubed_f": bf,
    }


# ---- methods on one neighbour graph --------------------------------------------------------------
def components(n: int, pairs: npt.NDArray[np.int64]) -> Labels:
    """Connected components (union–find, path halving), labelled by their smallest member."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def edge_distances(x: npt.NDArray[np.float32], pairs: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    sims = np.einsum("ij,ij->i", x[pairs[:, 0]].astype(np.float64), x[pairs[:, 1]].astype(np.float64))
    out: npt.NDArray[np.float64] = np.sqrt(np.maximum(2 - 2 * sims, 0))
    return out


def chinese_whispers(n: int, pairs: npt.NDArray[np.int64], weights: npt.NDArray[np.float64]) -> Labels:
    import dlib

    edges = [(int(a), int(b), float(w)) for (a, b), w in zip(pairs.tolist(), weights, strict=True)]
    edges += [(i, i, 0.0) for i in range(n)]  # every vertex present; a weightless loop keeps no label
    return np.asarray(dlib.chinese_whispers(edges), dtype=np.int64)


def leiden(
    n: int, pairs: npt.NDArray[np.int64], weights: npt.NDArray[np.float64], resolution: float
) -> Labels:
    import igraph
    import leidenalg

    graph = igraph.Graph(n=n, edges=pairs.tolist(), directed=False)
    graph.es["weight"] = weights.tolist()
    found = leidenalg.find_partition(
        graph, leidenalg.CPMVertexPartition, weights="weight", resolution_parameter=resolution, seed=1
    )
    return np.asarray(found.membership, dtype=np.int64)


def has_leiden() -> bool:
    try:
        import igraph  # noqa: F401
        import leidenalg  # noqa: F401
    except ImportError:
        return False
    return True


Run = Callable[[], Labels]


def sweeps(x: npt.NDArray[np.float32], pairs: npt.NDArray[np.int64]) -> dict[str, list[tuple[str, Run]]]:
    """Each method's parameter points, as (label, run) pairs."""
    n = len(x)
    d = edge_distances(x, pairs)

    def below(t: float) -> npt.NDArray[np.int64]:
        return pairs[d < t]

    def similarity(t: float) -> npt.NDArray[np.float64]:
        return 1 - d[d < t] ** 2 / 2

    out: dict[str, list[tuple[str, Run]]] = {
        "connected components": [
            (f"d < {t}", partial(components, n, below(t))) for t in (0.25, 0.28, 0.3, 0.32, 0.35)
        ],
        "chinese whispers": [
            (f"d < {t}", partial(chinese_whispers, n, below(t), similarity(t)))
            for t in (0.3, 0.35, 0.4, 0.45)
        ],
        "average linkage": [
            (f"d {t}", partial(average_linkage, x, pairs, Linkage.from_distances(t, t)))
            for t in (0.33, 0.34, 0.35, 0.36, 0.37)
        ],
        "size-aware average linkage": [
            (f"{s}/{loose}", partial(average_linkage, x, pairs, Linkage.from_distances(s, loose)))
            for s in (0.3, 0.31, 0.32, 0.33, 0.34)
            for loose in (0.35, 0.36, 0.37, 0.38)
            if s <= loose
        ],
    }
    if has_leiden():
        out["leiden (CPM)"] = [
            (f"γ {g}", partial(leiden, n, below(0.4), similarity(0.4), g))
            for g in (0.02, 0.05, 0.1, 0.2, 0.4)
        ]
    return out


# ---- LFW through the API --------------------------------------------------------------------------
def lfw(neighbours: int, limit: int, data: Path) -> dict[str, Any]:
    root = faces_dir() / "lfw" / "images"
    paths = sorted(root.glob("*/*"))
    if limit:
        paths = paths[:limit]
    truth = [p.parent.name for p in paths]
    print(f"LFW: {len(paths):,} photos of {len(set(truth)):,} people")
    server = spawn(data / "lfw")
    try:
        with FaceIdClient(server.address, timeout=600, api_key=server.admin_key) as client:
            client.embed(paths[0].read_bytes())  # models loaded before the clock
            vectors, seconds = embed_all(client, paths, "embed LFW")
            x = vectors["centre"]
            found = ~np.isnan(x[:, 0])
            print(
                f"embedded {len(paths):,} photos in {seconds:.0f} s; no face found in {int((~found).sum())}"
            )
            client.create_gallery("lfw")
            t0 = time.perf_counter()
            answer = client.cluster_faces("lfw", [v.tolist() for v in x[found]])
            api_seconds = time.perf_counter() - t0
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    rows = np.flatnonzero(found)
    via_api = np.arange(len(paths), dtype=np.int64)  # a photo without a face: a singleton of its own
    for c in answer.clusters:
        members = rows[[f.index for f in c.faces]]
        via_api[members] = members.min()
    results: dict[str, Any] = {
        "photos": len(paths),
        "people": len(set(truth)),
        "no_face": int((~found).sum()),
        "embed_seconds": seconds,
        "api": {
            **scores(truth, via_api),
            "seconds": api_seconds,
            "strict_distance": answer.strict_distance,
            "loose_distance": answer.loose_distance,
        },
        "methods": {},
    }
    print_row(
        "ClusterFaces (API, defaults)",
        f"{answer.strict_distance:g}/{answer.loose_distance:g}",
        results["api"],
    )
    xs = x[found].astype(np.float32)
    _, nearest = FaissBackend(IndexConfig()).neighbours(xs, neighbours + 1)  # as ClusterFaces takes them
    pairs = neighbour_pairs(nearest)
    for method, points in sweeps(xs, pairs).items():
        rows_out: list[dict[str, Any]] = []
        for label, run in points:
            t0 = time.perf_counter()
            labels = np.arange(len(paths), dtype=np.int64)
            labels[rows] = rows[run()]
            row = {"parameter": label, **scores(truth, labels), "seconds": time.perf_counter() - t0}
            rows_out.append(row)
        best = max(rows_out, key=lambda r: r["bcubed_f"] + r["pairwise_f"])
        for row in rows_out:
            print_row(method if row is best else "", str(row["parameter"]), row, mark=row is best)
        results["methods"][method] = rows_out
    return results


def print_row(method: str, parameter: str, r: dict[str, Any], mark: bool = False) -> None:
    print(
        f"{method:<30} {parameter:<10} clusters {r['clusters']:6d}  pairwise P {r['pairwise_precision']:.3f} "
        f"R {r['pairwise_recall']:.3f} F {r['pairwise_f']:.4f}   BCubed P {r['bcubed_precision']:.3f} "
        f"R {r['bcubed_recall']:.3f} F {r['bcubed_f']:.4f}  {r['seconds']:6.1f} s"
        + ("  ← best" if mark else "")
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    api = results["api"]
    for ax, (x0, y0) in zip(axes, [(0.0, 0.2), (0.9, 0.88)], strict=True):
        for method, rows in results["methods"].items():
            style = "o" if method == "size-aware average linkage" else "o-"  # a grid, not a sweep
            ax.plot([r["pairwise_f"] for r in rows], [r["bcubed_f"] for r in rows], style, label=method, ms=4)
        ax.plot([api["pairwise_f"]], [api["bcubed_f"]], "k*", ms=14, label="ClusterFaces (defaults)")
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
        ax.axvline(0.90, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("pairwise F")
        ax.set_ylabel("BCubed F")
        ax.set_xlim(x0, 1)
        ax.set_ylim(y0, 1 if x0 == 0 else 0.97)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(f"LFW, {results['photos']:,} photos of {results['people']:,} people: every sweep point")
    axes[1].set_title("the corner of the targets (dashed: BCubed F 0.95, pairwise F 0.90)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ---- scale --------------------------------------------------------------------------------------
def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale(n: int, per: int, neighbours: int, batch: int = 8192) -> dict[str, Any]:
    """The engine's method on ``n`` synthetic faces: the index, the neighbour graph, the merges."""
    from faceid.benchmarks.synthetic import FaceDistribution

    x, identity = FaceDistribution.load().sample(n // per, per, seed=7)
    print(f"scale: {len(x):,} synthetic faces, {per} per identity, {neighbours} neighbours")
    out: dict[str, Any] = {"faces": len(x), "per_identity": per, "neighbours": neighbours}
    t0 = time.perf_counter()
    index = FaissGalleryIndex(x.shape[1], IndexConfig(background=False))
    ids = np.arange(len(x), dtype=np.int64)
    index.add(ids, x, ids)
    out["index_seconds"] = time.perf_counter() - t0
    out["index"] = index.stats().kind
    print(f"index: {out['index']} in {out['index_seconds']:.0f} s")
    t0 = time.perf_counter()
    table = np.empty((len(x), neighbours + 1), np.int64)
    progress = Progress(len(x), "neighbours")
    for start in range(0, len(x), batch):
        _, found = index.search(x[start : start + batch], neighbours + 1)
        table[start : start + batch] = found
        progress.update(len(found))
    out["graph_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = neighbour_pairs(table)
    config = ClusterConfig()
    labels = average_linkage(x, pairs, Linkage.from_distances(config.strict_distance, config.loose_distance))
    out["linkage_seconds"] = time.perf_counter() - t0
    out["total_seconds"] = out["index_seconds"] + out["graph_seconds"] + out["linkage_seconds"]
    out["peak_memory_mib"] = peak_mib()
    out.update(scores(identity.tolist(), labels))
    out["identities"] = int(identity.max() + 1)
    print(
        f"scale: graph {out['graph_seconds']:.0f} s ({len(x) / out['graph_seconds']:,.0f} searches/s), "
        f"linkage {out['linkage_seconds']:.0f} s, total with the index {out['total_seconds']:.0f} s; "
        f"peak memory {out['peak_memory_mib']:,.0f} MiB"
    )
    print_row("size-aware average linkage", "defaults", {**out, "seconds": out["linkage_seconds"]})
    return out


def server_peak_mib(pid: int) -> float:
    """The server process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gallery_run(n: int, per: int, data: Path) -> dict[str, Any]:
    """``n`` synthetic faces enrolled into a spawned server (EnrollBatch; identity ``g{i}-{j}``:
    face ``j`` of generated person ``i``, each face its own identity, as an archive of unlabelled
    photos holds them), then StartClustering through gRPC, followed to its end: the seconds of
    each phase as the client saw them, the server's peak memory, the quality against the people."""
    from faceid.benchmarks.synthetic import FaceDistribution
    from faceid.client.client import enroll_request

    x, identity = FaceDistribution.load().sample(n // per, per, seed=11)
    print(f"gallery run: {len(x):,} synthetic faces, {per} per identity, through the API")
    server = spawn(data / "scale")
    out: dict[str, Any] = {"faces": len(x), "per_identity": per}
    try:
        with FaceIdClient(server.address, timeout=600, api_key=server.admin_key) as client:
            client.create_gallery("scale")
            progress = Progress(len(x), "enrol")
            t0 = time.perf_counter()
            for start in range(0, len(x), 5000):
                requests = [
                    enroll_request("scale", f"g{identity[i]}-{i % per}", embedding=x[i].tolist())
                    for i in range(start, min(len(x), start + 5000))
                ]
                client.enroll_batch(requests)
                progress.update(len(requests))
            out["enrol_seconds"] = time.perf_counter() - t0
            while client.get_gallery("scale").index_training:
                time.sleep(2)
            out["index_kind"] = client.get_gallery("scale").index_kind
            t0 = time.perf_counter()
            phases: dict[str, float] = {}

            def seen(r: Any) -> None:
                phases.setdefault(r.phase, time.perf_counter() - t0)

            run = client.wait_clustering(
                "scale", client.start_clustering("scale").run_id, poll=1.0, progress=seen
            )
            out["run_seconds"] = time.perf_counter() - t0
            out["phase_started_s"] = phases
            out["server_peak_memory_mib"] = server_peak_mib(server.proc.pid)
            if run.state != "SUCCEEDED":
                raise RuntimeError(f"the run {run.state}: {run.error}")
            person = {f"g{identity[i]}-{i % per}": int(identity[i]) for i in range(len(x))}
            truth, labels = [], []
            for c in client.list_clusters("scale", run.run_id, page_size=1000):
                truth += [person[e] for e in c.identity_ids]
                labels += [c.rank] * len(c.identity_ids)
            out.update(scores(truth, np.asarray(labels, np.int64)))
            out["identities"] = int(identity.max() + 1)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(120)
    print(
        f"gallery run: enrolled in {out['enrol_seconds']:.0f} s; StartClustering to SUCCEEDED in "
        f"{out['run_seconds']:.0f} s (phases began at "
        f"{', '.join(f'{k} {v:.0f} s' for k, v in phases.items())}); "
        f"server peak memory {out['server_peak_memory_mib']:,.0f} MiB"
    )
    print_row("StartClustering (API)", "defaults", {**out, "seconds": out["run_seconds"]})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lfw", action="store_true", help="compare the methods on LFW through the API")
    parser.add_argument("--limit", type=int, default=0, help="only the first N LFW photos (0: all)")
    parser.add_argument("--scale", type=int, default=0, help="cluster N synthetic faces (0: skip)")
    parser.add_argument("--gallery", type=int, default=0, help="cluster N synthetic faces as a gallery run")
    parser.add_argument("--per", type=int, default=5, help="faces per synthetic identity")
    parser.add_argument("--neighbours", type=int, default=ClusterConfig().neighbours)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="clustering")
    args = parser.parse_args(argv)
    print(
        f"clustering: lfw {args.lfw}, scale {args.scale:,}, gallery {args.gallery:,}, "
        f"{args.per} per identity, "
        f"neighbours {args.neighbours}"
    )
    print(f"machine: {machine()}")
    payload: dict[str, Any] = {"benchmark": "clustering", "neighbours": args.neighbours}
    if args.lfw:
        payload["lfw"] = lfw(args.neighbours, args.limit, Path(tempfile.mkdtemp(prefix="faceid-cluster-")))
        args.out.mkdir(parents=True, exist_ok=True)
        plot(payload["lfw"], args.out / f"{args.name}_lfw.png")
    if args.scale:
        payload["scale"] = scale(args.scale, args.per, args.neighbours)
    if args.gallery:
        payload["gallery"] = gallery_run(
            args.gallery, args.per, Path(tempfile.mkdtemp(prefix="faceid-cluster-"))
        )
    payload["machine"] = machine()
    write_json(args.out / f"{args.name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
