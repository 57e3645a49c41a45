"""Load generator: drives a faceid server over gRPC and reports throughput, latency and errors.

    python -m faceid.benchmarks.load --spawn --gallery-size 100000 --workload identify-embedding \\
        --concurrency 32 --duration 20

``--spawn`` starts ``faceid serve`` on a fresh data directory (extra server flags
through ``--server-env KEY=VALUE``); otherwise ``--server HOST:PORT`` names a
running one.  The gallery is filled through BulkEnroll with synthetic unit
embeddings (``--gallery-size``).  Workloads: identify-embedding, identify-photo,
enroll-embedding, mix (``--enroll-ratio`` of the calls enrol, the rest identify by
embedding), and identify-batch-embedding / identify-batch-photo (IdentifyBatch calls of
``--batch-size`` probes: lookups/s is calls/s times the batch, and probes that failed alone
are counted by their code).  Calls run from ``--processes`` processes with
``--concurrency`` calls in flight in total, after ``--warmup`` seconds.

With ``--ceiling`` the same harness also drives a trivial gRPC handler (one that
answers Identify with an empty response) on this machine, and faceid's throughput
is reported as a fraction of it: the ceiling of Python gRPC here.

Prints its parameters and figures; writes JSON and a latency-distribution plot.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from faceid.benchmarks.common import faces_dir, machine, unit_vectors, write_json
from faceid.benchmarks.synthetic import FITTED, FaceDistribution
from faceid.client.client import (
    call_metadata,
    channel_options,
    code_name,
    enroll_request,
    identify_batch_request,
    identify_request,
)
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc

GALLERY = "load"


@functools.cache
def _fitted() -> FaceDistribution | None:
    return FaceDistribution.load() if FITTED.is_file() else None


def face_vectors(n: int, seed: int, kind: str = "fitted") -> np.ndarray:
    """``n`` embeddings of distinct synthetic people: drawn from the model fitted to real faces
    (``benchmarks/face_distribution.npz``; clustered like real embeddings, which is what an IVF
    index sees), or ``uniform`` on the sphere (no structure: the worst case for IVF)."""
    model = _fitted() if kind == "fitted" else None
    if model is None:
        return unit_vectors(n, seed)
    vectors, _ = model.sample(n, 1, seed)
    return vectors


@dataclass(frozen=True)
class Workload:
    """What the callers send: ``name`` is one of :data:`WORKLOADS`; ``batch`` is the probes of one
    IdentifyBatch call (the identify-batch workloads)."""

    name: str
    top_k: int = 10
    enroll_ratio: float = 0.05
    nprobe: int = 0  # 0: the server's default
    vectors: str = "fitted"
    photos: tuple[bytes, ...] = ()
    #: After a refusal, wait the server's ``grpc-retry-pushback-ms`` before the next call, as gRPC
    #: retry policies do (False: call again at once, the worst case for the server).
    honour_pushback: bool = True
    batch: int = 256

    @property
    def probes_per_call(self) -> int:
        return self.batch if self.name.startswith("identify-batch") else 1


WORKLOADS = (
    "identify-embedding",
    "identify-photo",
    "enroll-embedding",
    "mix",
    "identify-batch-embedding",
    "identify-batch-photo",
)
#: The workloads whose searches take ``--nprobe``.
SEARCHES_EMBEDDINGS = ("identify-embedding", "mix", "identify-batch-embedding")


# ---- servers ----------------------------------------------------------------------------------
class TrivialServicer(pb_grpc.FaceIdServicer):
    async def Identify(self, request: pb.IdentifyRequest, context: Any) -> pb.IdentifyResponse:  # noqa: N802
        return pb.IdentifyResponse()


def _trivial_main(port_queue: Any) -> None:
    async def run() -> None:
        server = grpc.aio.server(options=channel_options())
        pb_grpc.add_FaceIdServicer_to_server(TrivialServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_queue.put(port)
        await server.wait_for_termination()

    asyncio.run(run())


def fill_gallery(
    address: str,
    n: int,
    api_key: str = "",
    vectors: str = "fitted",
    batch: int = 5000,
    method: str = "batch",
    gallery: str = GALLERY,
    first: int = 0,
) -> float:
    """Create the gallery and enrol ``n`` synthetic faces through EnrollBatch (``method`` "batch",
    ``batch`` per call) or BulkEnroll ("stream"); waits for index training; returns the seconds
    the enrolment itself took."""
    channel = grpc.insecure_channel(address, channel_options())
    stub = pb_grpc.FaceIdStub(channel)
    md = call_metadata(api_key, ())
    try:
        stub.CreateGallery(pb.CreateGalleryRequest(gallery_id=gallery), metadata=md)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    start = time.perf_counter()
    done = 0
    while done < n:
        m = min(batch, n - done)
        vecs = face_vectors(m, first + done, vectors)
        requests = [
            enroll_request(gallery, f"p{first + done + i}", embedding=vecs[i].tolist()) for i in range(m)
        ]
        if method == "batch":
            results = stub.EnrollBatch(pb.EnrollBatchRequest(items=requests), metadata=md).results
        else:
            results = stub.BulkEnroll(iter(requests), metadata=md)
        for r in results:
            if r.error_code:
                raise RuntimeError(f"enrolment failed: {r.error_message}")
        done += m
        print(f"\rgallery {gallery}: {done:,}/{n:,} faces", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    seconds = time.perf_counter() - start
    wait_for_index(stub, md, gallery)
    channel.close()
    return seconds


def compare_fill(address: str, n: int, api_key: str, vectors: str) -> dict[str, float]:
    """Faces/s of ``n`` enrolments by EnrollBatch and by BulkEnroll, each into a gallery of its own."""
    out = {}
    for method in ("stream", "batch"):
        seconds = fill_gallery(
            address, n, api_key, vectors, method=method, gallery=f"fill-{method}", first=10**9
        )
        out[f"{method}_faces_per_s"] = n / seconds
        print(f"enrol {n:,} embeddings over gRPC by {method}: {n / seconds:,.0f} faces/s")
    out["batch_over_stream"] = out["batch_faces_per_s"] / out["stream_faces_per_s"]
    print(f"  EnrollBatch / BulkEnroll in this run: {out['batch_over_stream']:.1f}×")
    return out


def wait_for_index(stub: Any, md: list[tuple[str, str]], name: str = GALLERY, timeout: float = 3600) -> None:
    """Wait until no index training runs, so that the load meets the index it will serve with."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        gallery = stub.GetGallery(pb.GetGalleryRequest(name=f"galleries/{name}"), metadata=md)
        if not gallery.index_training:
            return
        print(f"\rindex: training ({gallery.face_count:,} faces)", end="", file=sys.stderr, flush=True)
        time.sleep(2)
    raise TimeoutError("the index was still training")


# ---- load -------------------------------------------------------------------------------------
def _requests(w: Workload, seed: int) -> Iterator[tuple[str, Any]]:
    """The calls one load process makes, built before the clock starts: a load generator that
    spends its CPU on building messages measures itself, not the server."""
    rng = random.Random(seed)
    identify = [
        identify_request(GALLERY, embedding=q.tolist(), top_k=w.top_k, nprobe=w.nprobe)
        for q in face_vectors(1024, 10_000_000 + seed, w.vectors)  # people not in the gallery
    ]
    fresh = (
        face_vectors(4096, 20_000_000 + seed, w.vectors) if w.name in ("mix", "enroll-embedding") else None
    )
    if w.name == "identify-batch-embedding":
        vectors = face_vectors(8 * w.batch, 10_000_000 + seed, w.vectors)
        batches = [
            identify_batch_request(GALLERY, list(vectors[i : i + w.batch]), top_k=w.top_k, nprobe=w.nprobe)
            for i in range(0, len(vectors), w.batch)
        ]
        yield from (("IdentifyBatch", batches[n % len(batches)]) for n in itertools.count())
    if w.name == "identify-batch-photo":
        photos = [w.photos[i % len(w.photos)] for i in range(w.batch)]
        yield from itertools.repeat(("IdentifyBatch", identify_batch_request(GALLERY, photos, top_k=w.top_k)))
    n = 0
    while True:
        n += 1
        if w.name == "identify-photo":
            yield "Identify", identify_request(GALLERY, photo=w.photos[n % len(w.photos)], top_k=w.top_k)
        elif fresh is not None and (w.name == "enroll-embedding" or rng.random() < w.enroll_ratio):
            vec = fresh[n % len(fresh)].tolist()  # a new identity each call: built as it goes
            yield "Enroll", enroll_request(GALLERY, f"new-{seed}-{n}", embedding=vec)
        else:
            yield "Identify", identify[n % len(identify)]


async def timed_call(stub: Any, method: str, request: Any, md: list[tuple[str, str]]) -> str:
    """Make one call; its status code's name ("OK" when it succeeded)."""
    return (await call_with_pushback(stub, method, request, md))[0]


async def call_with_pushback(
    stub: Any, method: str, request: Any, md: list[tuple[str, str]]
) -> tuple[str, float, Counter[str]]:
    """Make one call; its status code's name, the server's ``grpc-retry-pushback-ms`` in seconds
    (0 when it sent none), and of an IdentifyBatch answer, its probes' codes by name."""
    try:
        response = await getattr(stub, method)(request, timeout=30, metadata=md)
    except grpc.aio.AioRpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        pushback = trailers.get("grpc-retry-pushback-ms", "")
        return str(exc.code().name), int(pushback) / 1000 if str(pushback).isdigit() else 0.0, Counter()
    probes = Counter(code_name(r.error_code) for r in getattr(response, "results", ()))
    return "OK", 0.0, probes


async def _worker_loop(
    address: str,
    api_key: str,
    w: Workload,
    concurrency: int,
    warmup: float,
    duration: float,
    seed: int,
    channels: int = 1,
) -> dict[str, Any]:
    # Each channel its own connection (no shared subchannel): a server of several processes
    # shares out connections, not calls.
    options = [*channel_options(retries=False), ("grpc.use_local_subchannel_pool", 1)]
    channels_ = [grpc.aio.insecure_channel(address, options) for _ in range(channels)]
    stubs = [pb_grpc.FaceIdStub(c) for c in channels_]
    md = call_metadata(api_key, ())
    latencies: list[float] = []
    ok: list[bool] = []
    codes: Counter[str] = Counter()
    probe_codes: Counter[str] = Counter()
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + duration
    gen = _requests(w, seed)

    async def one(stub: Any) -> None:
        while True:
            now = time.perf_counter()
            if now >= end:
                return
            method, request = next(gen)
            t0 = time.perf_counter()
            code, pushback, probes = await call_with_pushback(stub, method, request, md)
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                ok.append(code == "OK")
                codes[code] += 1
                probe_codes.update(probes)
            if pushback and w.honour_pushback:  # a well-behaved client waits as the server asks
                await asyncio.sleep(pushback)

    await asyncio.gather(*(one(stubs[i % channels]) for i in range(concurrency)))
    for channel in channels_:
        await channel.close()
    return {
        "latencies": latencies,
        "ok": ok,
        "codes": dict(codes),
        "probe_codes": dict(probe_codes),
        "seconds": duration,
    }


def _process_main(args: tuple[Any, ...], out: Any) -> None:
    out.put(asyncio.run(_worker_loop(*args)))


def run_load(
    address: str,
    w: Workload,
    concurrency: int,
    processes: int = 1,
    warmup: float = 2.0,
    duration: float = 10.0,
    api_key: str = "",
    channels: int = 1,
) -> dict[str, Any]:
    """Drive ``address`` from ``processes`` processes of ``channels`` connections each; summarise
    throughput, latency percentiles (ms) and errors by code."""
    per = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_main, args=((address, api_key, w, c, warmup, duration, i, channels), out))
        for i, c in enumerate(per)
        if c
    ]
    for p in procs:
        p.start()
    parts = [out.get() for _ in procs]
    for p in procs:
        p.join()
    every = np.array([x for part in parts for x in part["latencies"]]) * 1e3
    answered = np.array([x for part in parts for x in part["ok"]], dtype=bool)
    lat = every[answered]  # answered calls
    refused = every[~answered]
    codes: Counter[str] = Counter()
    probe_codes: Counter[str] = Counter()
    for part in parts:
        codes.update(part["codes"])
        probe_codes.update(part["probe_codes"])
    ok = codes.get("OK", 0)
    pct = {f"p{q}": float(np.percentile(lat, q)) if len(lat) else float("nan") for q in (50, 90, 99, 99.9)}
    return {
        "workload": w.name,
        "nprobe": w.nprobe,
        "concurrency": concurrency,
        "processes": len(procs),
        "channels": channels,
        "duration_s": duration,
        "requests": len(every),
        "refused_share": 1 - len(lat) / max(1, len(every)),
        "ok_per_s": ok / duration,
        "probes_per_call": w.probes_per_call,
        # Answered lookups: every probe of an answered call but those that failed alone.
        "lookups_per_s": (ok * w.probes_per_call - sum(n for c, n in probe_codes.items() if c != "OK"))
        / duration,
        "probe_codes": dict(probe_codes),
        "latency_ms": {**pct, "max": float(lat.max(initial=0))},
        "refusal_ms": {
            f"p{q}": float(np.percentile(refused, q)) if len(refused) else float("nan") for q in (50, 99)
        },
        "codes": dict(codes),
        "latencies_ms": lat.tolist(),
    }


def pipeline_alone(photos: list[bytes], seconds: float = 10.0, threads: int = 2) -> dict[str, float]:
    """Photos/s of the face pipeline in this process, no gRPC: decode + detect alone, and with
    alignment and embedding too (what identify-by-photo does before its search)."""
    from concurrent.futures import ThreadPoolExecutor

    from faceid.engine.vision.pipeline import FacePipeline

    pipeline = FacePipeline()
    pipeline.process(photos[0])  # load the models first

    def rate(work: Any) -> float:
        end = time.perf_counter() + seconds
        counts = [0] * threads

        def loop(t: int) -> None:
            i = t
            while time.perf_counter() < end:
                work(photos[i % len(photos)])
                i += threads
                counts[t] += 1

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(loop, range(threads)))
        return sum(counts) / seconds

    return {
        "detect_photos_per_s": rate(lambda p: pipeline.detect(pipeline.decode(p))),
        "pipeline_photos_per_s": rate(pipeline.process),
    }


def summary(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    errors = {k: v for k, v in r["codes"].items() if k != "OK"}
    errors.update({f"probe {k}": v for k, v in r.get("probe_codes", {}).items() if k != "OK"})
    per_call = r.get("probes_per_call", 1)
    return (
        f"{r['workload']:<18} nprobe {r.get('nprobe') or 'default':<7} c={r['concurrency']:<4} "
        f"{r['ok_per_s']:7.0f} ok/s"
        + (f" × {per_call} = {r['lookups_per_s']:7.0f} lookups/s" if per_call > 1 else "")
        + f"  p50 {lat['p50']:6.2f}  p90 {lat['p90']:6.2f}  p99 {lat['p99']:6.2f}  "
        f"p99.9 {lat['p99.9']:6.2f}  max {lat['max']:7.2f} ms  refused {r['refused_share']:.1%}"
        + (f" (in p99 {r['refusal_ms']['p99']:.1f} ms)" if r["refused_share"] else "")
        + f"  errors {errors or 0}"
    )


def plot_sweep(results: list[dict[str, Any]], path: Path) -> None:
    """Throughput, p99 of answered calls and the share refused, against concurrency: where
    capacity ends, refusals rise and latency stays bounded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for workload, nprobe in sorted({(r["workload"], r["nprobe"]) for r in results if "label" not in r}):
        rows = sorted(
            (r for r in results if (r["workload"], r["nprobe"]) == (workload, nprobe) and "label" not in r),
            key=lambda r: r["concurrency"],
        )
        c = [r["concurrency"] for r in rows]
        name = f"{workload} nprobe {nprobe}" if nprobe else workload
        axes[0].plot(c, [r["ok_per_s"] for r in rows], "o-", label=name)
        axes[1].plot(c, [r["latency_ms"]["p99"] for r in rows], "o-", label=name)
        axes[2].plot(c, [100 * r["refused_share"] for r in rows], "o-", label=name)
    for ax, label in zip(
        axes,
        ["answered calls/s", "p99 of answered calls (ms)", "% refused (RESOURCE_EXHAUSTED …)"],
        strict=True,
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("calls in flight (concurrency)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def _nprobe_label(r: dict[str, Any]) -> str:
    return f"nprobe {r['nprobe']} " if r.get("nprobe") else ""


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        lat = np.sort(np.asarray(r["latencies_ms"]))
        if len(lat):
            ax.plot(
                lat,
                1 - np.arange(len(lat)) / len(lat),
                label=f"{r.get('label', r['workload'])} {_nprobe_label(r)}c={r['concurrency']}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of calls slower")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="", help="HOST:PORT of a running server")
    ap.add_argument("--api-key", default=os.environ.get("FACEID_API_KEY", ""), help="for --server")
    ap.add_argument("--spawn", action="store_true", help="start a server on a fresh data directory")
    ap.add_argument("--server-env", action="append", default=[], help="FACEID_SETTING=value for --spawn")
    ap.add_argument("--gallery-size", type=int, default=10_000)
    ap.add_argument(
        "--workload",
        default="identify-embedding",
        help=f"{', '.join(WORKLOADS)}; comma-separated for several",
    )
    ap.add_argument("--batch-size", type=int, default=256, help="probes per IdentifyBatch call")
    ap.add_argument("--enroll-ratio", type=float, default=0.05)
    ap.add_argument("--concurrency", default="32", help="comma-separated")
    ap.add_argument("--processes", type=int, default=1, help="load generator processes")
    ap.add_argument(
        "--channels",
        type=int,
        default=1,
        help="connections per load process (a server of several processes shares out connections)",
    )
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument(
        "--nprobe", default="0", help="IVF lists per identify, comma-separated (0: server default)"
    )
    ap.add_argument(
        "--vectors", choices=["fitted", "uniform"], default="fitted", help="synthetic gallery and probes"
    )
    ap.add_argument(
        "--no-pushback", action="store_true", help="callers ignore the server's retry pushback (worst case)"
    )
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument(
        "--ceiling", action="store_true", help="also drive a trivial handler (Python gRPC's ceiling)"
    )
    ap.add_argument(
        "--compare-fill", type=int, default=0, help="also enrol N faces by EnrollBatch and by BulkEnroll"
    )
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--name", default="load")
    args = ap.parse_args(argv)
    workloads = args.workload.split(",")
    if unknown := set(workloads) - set(WORKLOADS):
        raise SystemExit(f"unknown workload {', '.join(sorted(unknown))}: give one of {', '.join(WORKLOADS)}")
    nprobes = [int(n) for n in args.nprobe.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    photos = [
        p.read_bytes()
        for p in sorted((faces_dir() / "lfw_orig_subset10_krasserm" / "images").glob("*/*"))[:20]
    ]
    if {"identify-photo", "identify-batch-photo"} & set(workloads) and not photos:
        raise SystemExit("identify-photo needs photos: set FACEID_FACES_DIR")

    proc = None
    tmp = None
    if args.spawn:
        tmp = tempfile.TemporaryDirectory(prefix="faceid-load-")
        env = dict(kv.split("=", 1) for kv in args.server_env)
        from faceid.server.app import spawn  # here: the load processes need not import the engine

        proc, address, args.api_key = spawn(Path(tmp.name), env=env)
    elif args.server:
        address = args.server
    else:
        raise SystemExit("give --server HOST:PORT or --spawn")
    print(
        f"load: server {address}{' (spawned, ' + ' '.join(args.server_env) + ')' if args.spawn else ''}, "
        f"gallery {args.gallery_size:,}, workloads {workloads}, concurrency {concurrencies}, processes "
        f"{args.processes}, batch {args.batch_size} (identify-batch), top_k {args.top_k}, nprobe "
        f"{nprobes} (0 = server default), vectors "
        f"{args.vectors if args.vectors == 'uniform' or FITTED.is_file() else 'uniform (no fitted model)'}, "
        f"warm-up {args.warmup:g} s, {args.duration:g} s each"
    )
    print(f"machine: {machine()}")
    results: list[dict[str, Any]] = []
    payload: dict[str, Any] = {
        "benchmark": "load",
        "server": address,
        "gallery_size": args.gallery_size,
        "top_k": args.top_k,
        "server_env": args.server_env,
        "vectors": args.vectors,
    }
    try:
        payload["fill_seconds"] = fill_gallery(address, args.gallery_size, args.api_key, args.vectors)
        print(f"gallery filled by EnrollBatch: {args.gallery_size / payload['fill_seconds']:,.0f} faces/s")
        if args.compare_fill:
            payload["fill_compare"] = compare_fill(address, args.compare_fill, args.api_key, args.vectors)
        channel = grpc.insecure_channel(address)
        gallery = pb_grpc.FaceIdStub(channel).GetGallery(
            pb.GetGalleryRequest(name=f"galleries/{GALLERY}"), metadata=call_metadata(args.api_key, ())
        )
        channel.close()
        payload["index"] = {"kind": gallery.index_kind, "faces": gallery.face_count}
        print(f"gallery: {gallery.face_count:,} faces, index {gallery.index_kind}")
        for name in workloads:
            for nprobe in nprobes if name in SEARCHES_EMBEDDINGS else [0]:
                w = Workload(
                    name,
                    args.top_k,
                    args.enroll_ratio,
                    nprobe,
                    args.vectors,
                    tuple(photos),
                    not args.no_pushback,
                    args.batch_size,
                )
                for c in concurrencies:
                    r = run_load(
                        address, w, c, args.processes, args.warmup, args.duration, args.api_key, args.channels
                    )
                    results.append(r)
                    print(summary(r))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        if tmp is not None:
            tmp.cleanup()
    if {"identify-photo", "identify-batch-photo"} & set(workloads):
        payload["pipeline_alone"] = alone = pipeline_alone(photos, args.duration)
        print(
            f"face pipeline alone, in process, 2 threads: decode + detect {alone['detect_photos_per_s']:.1f} "
            f"photos/s; + align + embed {alone['pipeline_photos_per_s']:.1f} photos/s"
        )
    if args.ceiling:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        trivial = ctx.Process(target=_trivial_main, args=(q,), daemon=True)
        trivial.start()
        port = q.get(timeout=60)
        for c in concurrencies:
            trivial_load = Workload("identify-embedding", args.top_k, 0.0, 0, args.vectors)
            r = run_load(
                f"127.0.0.1:{port}",
                trivial_load,
                c,
                args.processes,
                args.warmup,
                args.duration,
                "",
                args.channels,
            )
            r["label"] = "trivial handler"
            results.append(r)
            print("trivial handler   " + summary(r)[18:].replace("nprobe default", "              "))
            ours = [
                x
                for x in results
                if x["workload"] == "identify-embedding"
                and x["concurrency"] == c
                and x["nprobe"] == nprobes[0]
                and "label" not in x
            ]
            if ours:
                print(
                    f"  faceid identify-embedding at c={c}: "
                    f"{ours[0]['ok_per_s'] / r['ok_per_s']:.0%} of the ceiling"
                )
        trivial.terminate()
    payload["results"] = results
    payload["machine"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / f"{args.name}.png")
    if len(concurrencies) >= 3:
        plot_sweep(results, args.out / f"{args.name}-sweep.png")
    for r in results:
        r.pop("latencies_ms", None)
    write_json(args.out / f"{args.name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
