"""IdentifyBatch against the index's own batched search, in one run, at million scale.

1. A server is spawned and filled with ``--n`` synthetic faces (the fitted generator,
   :func:`faceid.benchmarks.load.face_vectors`; identity ``p{i}`` holds face ``i``) through
   EnrollBatch; the index is trained; the server is stopped, which writes its index snapshot.
2. **In process**: that snapshot is loaded into a :class:`FaissGalleryIndex` with the default
   settings, and the queries are searched as the service searches them (``search_with_groups``,
   ``4 × top_k`` faces, re-ranked to ``top_k``) in batches of each ``--batches`` size: queries/s.
   This is the ceiling: the index alone, no gRPC, no Python servicer.
3. **Through gRPC**: the server is started again on the same data (the snapshot loads), and the
   same queries go through IdentifyBatch in batches of each size, ``--inflight`` calls at a time
   (requests built before the clock, as a load generator holds them): lookups/s, and their ratio to
   the in-process figure of the same batch size.  Then single Identify calls (the load generator,
   32 callers) for the ratio the issue starts from.
4. **Results**: recall@1 of IdentifyBatch against exact search (FAISS flat, in process), and the top
   identity of each batch answer against a single Identify call for the first 200 queries.

Queries (``--queries``, top_k 10) are ``mated`` (the default: gallery faces moved by a same-person
difference, a random direction of length ``--spread`` 0.4, about the median distance between two
photos of one person in LFW: the probes a watchlist screen or a dedupe job sends) or ``unmated``
(further synthetic people, not in the gallery: their nearest face is one of many near-ties, so
recall@1 is lower at the same operating point).

    python -m faceid.benchmarks.identify_batch [--n 1000000] [--queries 8192] [--batches 256,1024] \\
        [--inflight 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np

from faceid.benchmarks.common import machine, write_json
from faceid.benchmarks.load import GALLERY, Workload, face_vectors, fill_gallery, run_load
from faceid.client.client import call_metadata, channel_options
from faceid.engine.domain.search import SearchParams
from faceid.engine.index import FaissGalleryIndex
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc
from faceid.server.app import spawn

TOP_K = 10
FILL_BATCH = 5000  # fill_gallery's batch: vectors are drawn per batch, seeded by their first index


def gallery_vectors(n: int) -> np.ndarray:
    """The vectors fill_gallery enrolled, in order."""
    return np.concatenate([face_vectors(min(FILL_BATCH, n - i), i) for i in range(0, n, FILL_BATCH)])


def mated(gallery: np.ndarray, count: int, spread: float) -> np.ndarray:
    """``count`` gallery faces, each moved by ``spread`` in a random direction, unit length again."""
    rng = np.random.default_rng(7)
    picked = gallery[rng.choice(len(gallery), count, replace=False)]
    noise = rng.normal(size=picked.shape)
    noise -= (noise * picked).sum(1, keepdims=True) * picked  # orthogonal to the face
    moved = picked + spread * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    out: np.ndarray = (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)
    return out


def in_process(snapshot: Path, queries: np.ndarray, batch: int) -> float:
    """Queries/s of the server's own index, searched as the service searches, ``batch`` at a time."""
    index, _ = FaissGalleryIndex.load(snapshot)
    params = replace(SearchParams(), rerank_k=TOP_K)
    k_faces = max(TOP_K * 4, TOP_K + 10)
    index.search_with_groups(queries[:batch], k_faces, params)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(queries), batch):
        index.search_with_groups(queries[i : i + batch], k_faces, params)
    return len(queries) / (time.perf_counter() - t0)


def batch_request(queries: np.ndarray) -> pb.IdentifyBatchRequest:
    return pb.IdentifyBatchRequest(
        parent=f"galleries/{GALLERY}",
        probes=[pb.Probe(embedding=pb.Embedding(values=q.tolist())) for q in queries],
        top_k=TOP_K,
    )


def through_grpc(
    stub: Any, md: Any, queries: np.ndarray, batch: int, inflight: int
) -> tuple[float, list[int]]:
    """Lookups/s through IdentifyBatch, and the top identity (its index) of each query."""
    requests = [batch_request(queries[i : i + batch]) for i in range(0, len(queries), batch)]
    stub.IdentifyBatch(requests[0], metadata=md, timeout=300)  # warm-up

    def call(request: pb.IdentifyBatchRequest) -> list[int]:
        answer = stub.IdentifyBatch(request, metadata=md, timeout=300)
        tops = []
        for r in answer.results:
            if r.error_code:
                raise RuntimeError(r.error_message)
            tops.append(int(r.faces[0].matches[0].identity_id[1:]))
        return tops

    t0 = time.perf_counter()
    with ThreadPoolExecutor(inflight) as pool:
        tops = [t for part in pool.map(call, requests) for t in part]
    return len(queries) / (time.perf_counter() - t0), tops


def single_tops(stub: Any, md: Any, queries: np.ndarray) -> list[int]:
    out = []
    for q in queries:
        request = pb.IdentifyRequest(
            parent=f"galleries/{GALLERY}",
            probe=pb.Probe(embedding=pb.Embedding(values=q.tolist())),
            top_k=TOP_K,
        )
        answer = stub.Identify(request, metadata=md, timeout=60)
        out.append(int(answer.faces[0].matches[0].identity_id[1:]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=8192)
    ap.add_argument("--batches", default="256,1024")
    ap.add_argument("--inflight", type=int, default=2)
    ap.add_argument("--probes", choices=("mated", "unmated"), default="mated")
    ap.add_argument("--spread", type=float, default=0.4)
    ap.add_argument("--single-seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="identify_batch")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"identify batch: {args.n:,} faces, {args.queries:,} queries, top_k {TOP_K}, batches {batches}, "
        f"{args.inflight} calls in flight, {args.probes} probes"
    )
    print(f"machine: {machine()}")
    data = Path(tempfile.mkdtemp(prefix="faceid-batch-"))
    queries = (
        mated(gallery_vectors(args.n), args.queries, args.spread)
        if args.probes == "mated"
        else face_vectors(args.queries, 10**9)
    )

    server = spawn(data)
    key = server.admin_key  # printed at the first start only
    fill_seconds = fill_gallery(server.address, args.n, key, batch=FILL_BATCH)
    print(f"filled {args.n:,} faces in {fill_seconds:.0f} s")
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(600)
    [snapshot] = sorted((data / "index").glob("*.faceidx"))

    result: dict[str, Any] = {
        "n": args.n,
        "queries": args.queries,
        "probes": args.probes,
        "spread": args.spread,
        "top_k": TOP_K,
        "inflight": args.inflight,
    }
    result["in_process_qps"] = {b: in_process(snapshot, queries, b) for b in batches}
    for b, qps in result["in_process_qps"].items():
        print(f"in process, batches of {b:>5}: {qps:8.0f} queries/s")

    exact = faiss.IndexFlatL2(queries.shape[1])
    exact.add(gallery_vectors(args.n))
    _, truth = exact.search(queries, 1)
    del exact

    server = spawn(data, env={})
    try:
        channel = grpc.insecure_channel(server.address, channel_options())
        stub = pb_grpc.FaceIdStub(channel)  # type: ignore[no-untyped-call]
        md = call_metadata(key, ())
        result["grpc_qps"], result["ratio"], result["recall_at_1"] = {}, {}, {}
        tops: list[int] = []
        for b in batches:
            qps, tops = through_grpc(stub, md, queries, b, args.inflight)
            result["grpc_qps"][b] = qps
            result["ratio"][b] = qps / result["in_process_qps"][b]
            result["recall_at_1"][b] = float(np.mean(np.array(tops) == truth[:, 0]))
            print(
                f"IdentifyBatch, batches of {b:>5}: {qps:8.0f} lookups/s = {result['ratio'][b]:.0%} of in "
                f"process; recall@1 {result['recall_at_1'][b]:.4f}"
            )
        alone = single_tops(stub, md, queries[:200])
        result["same_top_as_identify"] = float(np.mean(np.array(alone) == np.array(tops[:200])))
        print(f"top identity equal to a single Identify call's: {result['same_top_as_identify']:.1%} of 200")
        single = run_load(
            server.address,
            Workload("identify-embedding", top_k=TOP_K),
            32,
            duration=args.single_seconds,
            api_key=key,
        )
        single.pop("latencies_ms")
        result["single_identify"] = single
        print(
            f"single Identify calls, 32 callers: {single['ok_per_s']:.0f} calls/s "
            f"(IdentifyBatch of {batches[-1]}: {result['grpc_qps'][batches[-1]] / single['ok_per_s']:.1f}×)"
        )
        channel.close()
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(600)
    result["machine"] = machine()
    write_json(args.out / f"{args.name}.json", {"benchmark": "identify_batch", **result})
    return result


if __name__ == "__main__":
    main()
