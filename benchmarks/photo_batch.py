"""Photos in IdentifyBatch against the engine's own batched rate, in one run.

The question (issue 18): when a caller sends many photos in one call, does the transport cost
anything beyond the face pipeline itself?  The photos are real (the full-size photos of
:data:`~faceid.benchmarks.photo_throughput.SETS`, cropped and resized to ``--size``), repeated
``--rounds`` times; the gallery holds each person's first photo.  Both sides run the default
settings (the detector ``auto``: the cascade on this CPU machine), one after the other:

1. **In process**: an :class:`~faceid.engine.service.engine.Engine` on a fresh data directory, no
   gRPC; the photos go to ``Engine.identify_batch`` in batches of ``--batch``, ``--inflight``
   batches at a time — decoding, detection (the CNN batched across photos of one size), alignment
   and embedding (batched) exactly as a server runs them.  This is the pipeline's own batched rate.
2. **Through gRPC**: a spawned ``faceid serve`` on its own data directory, the same photos in
   IdentifyBatch calls of the same size and concurrency (requests built before the clock).
3. **Single Identify** calls by photo, ``--inflight × --batch`` callers' worth capped at
   ``--callers``, for the figure a caller without batches gets.

Prints photos/s of each, the gRPC / in-process ratio (target ≥ 0.90), and whether every photo's
best identity is the same on both sides.

    python -m faceid.benchmarks.photo_batch [--size 640x480] [--rounds 3] [--batch 32] [--inflight 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from faceid.benchmarks.common import Progress, machine, write_json
from faceid.benchmarks.photo_throughput import SETS, photos_at
from faceid.client.client import (
    BatchMatches,
    FaceIdClient,
    FaceIdClientError,
    FaceMatches,
    Match,
)
from faceid.engine.config import EngineConfig
from faceid.engine.domain.errors import FaceIdError
from faceid.engine.domain.results import FaceMatches as EngineFaceMatches
from faceid.engine.domain.results import Match as EngineMatch
from faceid.engine.service.engine import Engine
from faceid.server.app import spawn

GALLERY = "photos"


def chunks(items: list[bytes], size: int) -> list[list[bytes]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _identity(match: Match | EngineMatch) -> str:
    return match.identity_id if isinstance(match, Match) else match.external_id


def best_of(faces: list[FaceMatches] | list[EngineFaceMatches]) -> str:
    """The best identity over a photo's faces ("" when none matched or no face was found)."""
    pairs = [(m.matches[0].similarity, _identity(m.matches[0])) for m in faces if m.matches]
    return max(pairs)[1] if pairs else ""


async def in_process(
    data: Path, first: dict[str, bytes], photos: list[bytes], batch: int, inflight: int
) -> tuple[float, list[str]]:
    """Photos/s of ``Engine.identify_batch`` over ``photos`` and each photo's best identity."""
    engine = Engine(EngineConfig(data_dir=data))
    try:
        await engine.create_gallery(GALLERY)
        for person, photo in first.items():
            with contextlib.suppress(FaceIdError):  # no face: that person is not enrolled
                await engine.enroll(GALLERY, person, photo)
        await engine.identify_batch(GALLERY, photos[:batch], top_k=1)  # models loaded, warm
        parts = chunks(photos, batch)
        answers: list[list[list[EngineFaceMatches] | FaceIdError]] = [[] for _ in parts]
        progress = Progress(len(photos), "in process")
        queue = iter(range(len(parts)))

        async def caller() -> None:
            for i in queue:
                answers[i] = (await engine.identify_batch(GALLERY, parts[i], top_k=1))[1]
                progress.update(len(parts[i]))

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(inflight)))
        seconds = time.perf_counter() - t0
    finally:
        await asyncio.to_thread(engine.close)
    best = [best_of(r) if isinstance(r, list) else "" for part in answers for r in part]
    return len(photos) / seconds, best


def through_grpc(
    client: FaceIdClient, photos: list[bytes], batch: int, inflight: int
) -> tuple[float, list[str]]:
    """Photos/s of IdentifyBatch calls over ``photos`` and each photo's best identity."""
    client.identify_batch(GALLERY, photos[:batch], top_k=1)  # warm
    progress = Progress(len(photos), "IdentifyBatch")

    def one(part: list[bytes]) -> list[BatchMatches]:
        answer = client.identify_batch(GALLERY, part, top_k=1)
        progress.update(len(part))
        return answer

    t0 = time.perf_counter()
    with ThreadPoolExecutor(inflight) as pool:
        answers = list(pool.map(one, chunks(photos, batch)))
    seconds = time.perf_counter() - t0
    best = [best_of(r.faces) if not r.error_code else "" for part in answers for r in part]
    return len(photos) / seconds, best


def single_calls(client: FaceIdClient, photos: list[bytes], callers: int) -> float:
    """Photos/s of one Identify call per photo, ``callers`` in flight."""
    progress = Progress(len(photos), "Identify")

    def one(photo: bytes) -> list[FaceMatches]:
        try:
            return client.identify(GALLERY, photo=photo, top_k=1)
        except FaceIdClientError:  # no face found: answered, as in the batch
            return []
        finally:
            progress.update()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(one, photos))
    return len(photos) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="only the first N real photos (0: all)")
    parser.add_argument("--batch", type=int, default=32, help="photos per IdentifyBatch call")
    parser.add_argument("--inflight", type=int, default=2, help="batches in flight")
    parser.add_argument("--callers", type=int, default=4, help="single Identify calls in flight")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="photo_batch")
    args = parser.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    labelled = photos_at((w, h))[: args.limit or None]
    first: dict[str, bytes] = {}
    for person, photo in labelled:
        first.setdefault(person, photo)
    photos = [p for _, p in labelled] * args.rounds
    print(
        f"photo batch: {len(photos)} photos ({len(labelled)} real photos of {SETS} at {w}×{h}, "
        f"{args.rounds} rounds), gallery of {len(first)} people, batch {args.batch}, {args.inflight} "
        f"in flight; single Identify with {args.callers} callers"
    )
    print(f"machine: {machine()}")
    data = Path(tempfile.mkdtemp(prefix="faceid-photo-batch-"))
    alone, best_alone = asyncio.run(in_process(data / "in-process", first, photos, args.batch, args.inflight))
    server = spawn(data / "server")
    try:
        with FaceIdClient(server.address, timeout=600, api_key=server.admin_key) as client:
            client.create_gallery(GALLERY)
            for person, photo in first.items():
                with contextlib.suppress(FaceIdClientError):
                    client.enroll(GALLERY, person, photo=photo)
            grpc_rate, best_grpc = through_grpc(client, photos, args.batch, args.inflight)
            single = single_calls(client, photos, args.callers)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    same = sum(a == b for a, b in zip(best_alone, best_grpc, strict=True))
    ratio = grpc_rate / alone
    print(f"{'in process, Engine.identify_batch':<36} {alone:7.1f} photos/s")
    print(f"{'through gRPC, IdentifyBatch':<36} {grpc_rate:7.1f} photos/s  ({ratio:.0%} of in process)")
    print(f"{'through gRPC, single Identify':<36} {single:7.1f} photos/s  ({single / alone:.0%})")
    print(f"same best identity on both sides: {same}/{len(photos)} photos")
    payload = {
        "benchmark": "photo_batch",
        "size": args.size,
        "photos": len(photos),
        "batch": args.batch,
        "inflight": args.inflight,
        "callers": args.callers,
        "in_process_photos_per_s": alone,
        "identify_batch_photos_per_s": grpc_rate,
        "identify_batch_over_in_process": ratio,
        "single_identify_photos_per_s": single,
        "same_best_identity": same,
        "machine": machine(),
    }
    write_json(args.out / f"{args.name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
