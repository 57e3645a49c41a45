"""Soak: sustained mixed load on a spawned server; its resident memory, errors and latency over time.

    python -m faceid.benchmarks.soak --duration 600 --gallery-size 100000 --concurrency 16

The gallery is filled with synthetic embeddings, then ``--concurrency`` callers run a
steady-state mix for ``--duration`` seconds: identify by embedding, enrol a new
identity (``--enroll-ratio``), delete one this caller enrolled earlier (as often as it
enrols, so the gallery keeps its size), and identify by photo (``--photo-ratio``).
The server's resident memory (RSS) is sampled every ``--interval`` seconds.  Growth
is measured from the end of ``--warmup`` to the end.  Target: no errors, growth ≤ 5 %.

Prints its parameters and a line per interval; writes JSON and a plot (RSS, p99 and
throughput over time).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import signal
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from faceid.benchmarks.common import faces_dir, machine, write_json
from faceid.benchmarks.load import GALLERY, face_vectors, fill_gallery, timed_call
from faceid.client.client import call_metadata, channel_options, enroll_request, identify_request
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux ``/proc``)."""
    with Path(f"/proc/{pid}/statm").open() as f:
        return int(f.read().split()[1]) * 4096


async def _callers(
    address: str,
    key: str,
    concurrency: int,
    duration: float,
    ratios: tuple[float, float],
    photos: list[bytes],
) -> list[tuple[float, float, str]]:
    """(start time, latency s, status) of every call, for ``duration`` seconds."""
    enroll_ratio, photo_ratio = ratios
    channel = grpc.aio.insecure_channel(address, channel_options())
    stub = pb_grpc.FaceIdStub(channel)
    md = call_metadata(key, ())
    queries = face_vectors(1024, 99)
    fresh = face_vectors(4096, 12_345)
    records: list[tuple[float, float, str]] = []
    end = time.time() + duration

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        mine: deque[str] = deque()
        n = 0
        while time.time() < end:
            n += 1
            r = rng.random()
            if r < enroll_ratio:
                identity = f"soak-{seed}-{n}"
                vec = fresh[(seed * 7919 + n) % len(fresh)]
                method, request = "Enroll", enroll_request(GALLERY, identity, embedding=vec.tolist())
                mine.append(identity)
            elif r < 2 * enroll_ratio and mine:
                name = f"galleries/{GALLERY}/identities/{mine.popleft()}"
                method, request = "DeleteIdentity", pb.DeleteIdentityRequest(name=name)
            elif r < 2 * enroll_ratio + photo_ratio and photos:
                method, request = "Identify", identify_request(GALLERY, photo=rng.choice(photos), top_k=10)
            else:
                q = queries[rng.randrange(len(queries))].tolist()
                method, request = "Identify", identify_request(GALLERY, embedding=q, top_k=10)
            t0 = time.time()
            code = await timed_call(stub, method, request, md)
            records.append((t0, time.time() - t0, code))

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    await channel.close()
    return records


def _load_main(args: tuple[Any, ...], out: Any) -> None:
    out.put(asyncio.run(_callers(*args)))


def timeline(
    records: list[tuple[float, float, str]], samples: list[tuple[float, int]], start: float, interval: float
) -> list[dict[str, Any]]:
    """Per interval: calls/s, errors, p99 latency (ms), RSS (MiB)."""
    t = np.array([r[0] for r in records]) - start
    lat = np.array([r[1] for r in records]) * 1e3
    ok = np.array([r[2] == "OK" for r in records])
    rows = []
    for t_rss, rss in samples:
        lo, hi = t_rss - start - interval, t_rss - start
        sel = (t >= lo) & (t < hi)
        rows.append(
            {
                "t": round(hi, 1),
                "ok_per_s": float(ok[sel].sum() / interval),
                "errors": int((~ok[sel]).sum()),
                "p99_ms": float(np.percentile(lat[sel], 99)) if sel.any() else float("nan"),
                "rss_mib": rss / 2**20,
            }
        )
    return rows


def plot(rows: list[dict[str, Any]], warmup: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for ax, key, label in zip(
        axes,
        ["rss_mib", "p99_ms", "ok_per_s"],
        ["server RSS (MiB)", "p99 latency (ms)", "calls/s (ok)"],
        strict=True,
    ):
        ax.plot(t, [r[key] for r in rows])
        ax.axvline(warmup, color="grey", linestyle=":", label="end of warm-up")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    errors = [r["t"] for r in rows if r["errors"]]
    if errors:
        axes[2].plot(errors, [0] * len(errors), "rx", label="intervals with errors")
    axes[0].legend(fontsize=7)
    axes[2].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before memory growth is measured")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--gallery-size", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--enroll-ratio", type=float, default=0.05, help="also the delete ratio")
    ap.add_argument("--photo-ratio", type=float, default=0.002)
    ap.add_argument("--server-env", action="append", default=[], help="FACEID_SETTING=value for the server")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--name", default="soak")
    args = ap.parse_args(argv)
    photos = [
        p.read_bytes()
        for p in sorted((faces_dir() / "lfw_orig_subset10_krasserm" / "images").glob("*/*"))[:20]
    ]
    print(
        f"soak: {args.duration:g} s, warm-up {args.warmup:g} s, gallery {args.gallery_size:,}, concurrency "
        f"{args.concurrency}, enrol {args.enroll_ratio:.1%} + delete {args.enroll_ratio:.1%}, photos "
        f"{args.photo_ratio:.1%} ({len(photos)} available), RSS every {args.interval:g} s"
    )
    print(f"machine: {machine()}")
    from faceid.server.app import spawn

    tmp = tempfile.TemporaryDirectory(prefix="faceid-soak-")
    env = dict(kv.split("=", 1) for kv in args.server_env)
    proc, address, key = spawn(Path(tmp.name), env=env)
    try:
        fill_seconds = fill_gallery(address, args.gallery_size, key)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        ratios = (args.enroll_ratio, args.photo_ratio)
        load = ctx.Process(
            target=_load_main, args=((address, key, args.concurrency, args.duration, ratios, photos), out)
        )
        start = time.time()
        load.start()
        samples: list[tuple[float, int]] = []
        while time.time() < start + args.duration:
            time.sleep(args.interval)
            samples.append((time.time(), rss_bytes(proc.pid)))
            print(
                f"\r{samples[-1][0] - start:6.0f} s  RSS {samples[-1][1] / 2**20:7.1f} MiB",
                end="",
                flush=True,
            )
        print()
        records = out.get()
        load.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        tmp.cleanup()
    rows = timeline(records, samples, start, args.interval)
    settled = [r for r in rows if r["t"] >= args.warmup]
    base, last = settled[0]["rss_mib"], np.mean([r["rss_mib"] for r in settled[-3:]])
    codes: dict[str, int] = {}
    for _, _, code in records:
        codes[code] = codes.get(code, 0) + 1
    lat = np.array([r[1] for r in records]) * 1e3
    summary = {
        "calls": len(records),
        "codes": codes,
        "ok_per_s": codes.get("OK", 0) / args.duration,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rss_after_warmup_mib": base,
        "rss_end_mib": float(last),
        "rss_growth": float(last / base - 1),
        "p99_first_minute_after_warmup_ms": float(np.nanmean([r["p99_ms"] for r in settled[:12]])),
        "p99_last_minute_ms": float(np.nanmean([r["p99_ms"] for r in settled[-12:]])),
    }
    for r in rows[:: max(1, len(rows) // 20)]:
        print(
            f"t={r['t']:6.0f} s  {r['ok_per_s']:7.0f} ok/s  errors {r['errors']}  p99 {r['p99_ms']:6.2f} ms  "
            f"RSS {r['rss_mib']:7.1f} MiB"
        )
    s = summary
    print(
        f"soak: {s['calls']:,} calls, {s['ok_per_s']:.0f} ok/s, codes {codes}, p99 {s['p99_ms']:.2f} ms "
        f"(first minute {s['p99_first_minute_after_warmup_ms']:.2f}, last {s['p99_last_minute_ms']:.2f}); "
        f"RSS {base:.1f} → {last:.1f} MiB after warm-up: {s['rss_growth']:+.2%}"
    )
    payload = {
        "benchmark": "soak",
        "parameters": vars(args) | {"out": str(args.out)},
        "fill_seconds": fill_seconds,
        "summary": summary,
        "timeline": rows,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.warmup, args.out / f"{args.name}.png")
    write_json(args.out / f"{args.name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
