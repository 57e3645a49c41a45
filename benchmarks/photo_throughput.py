"""Photos through the public API per detector mode: photos/s and latency at 640×480 and 1920×1080.

A mode is ``DETECTOR:UPSAMPLE:RETRY`` as in :mod:`faceid.benchmarks.detector_verification`
(``hog:1:0``: the HOG path before issue 17; ``cnn:0:1``: the default since).  The photos are real:
the full-size photos of ``fr_openface_examples7`` and ``deepface_unit13`` (one to a few people
each, faces at the scale the photographer left them), cropped to the size's aspect ratio and
resized.  For each mode a server is spawned with those settings, and for each size:

* **Embed**: every photo through the Embed call, ``--callers`` calls in flight (detection, landmarks,
  alignment and embedding, batched by the server as it batches any callers), ``--rounds`` times:
  photos/s, p50 and p99 latency, photos in which no face was found;
* **Identify** by photo against a gallery holding each person's first photo: photos/s, latency and
  how many photos have their own person as the best match of some face;
* the **detector alone** in process (one thread, no gRPC): milliseconds per photo.

All modes run in one process, one after the other, so their ratios are measured on the same machine
in the same state.

    python -m faceid.benchmarks.photo_throughput [--modes hog:1:0,cnn:0:1,cascade:0:1] \\
        [--sizes 640x480,1920x1080] [--callers 4] [--rounds 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from faceid.benchmarks.common import Progress, faces_dir, machine, write_json
from faceid.benchmarks.detector_verification import mode_settings
from faceid.client.client import DetectedFace, FaceIdClient, FaceIdClientError, FaceMatches
from faceid.server.app import spawn

SETS = ("fr_openface_examples7", "deepface_unit13")


def photos_at(size: tuple[int, int]) -> list[tuple[str, bytes]]:
    """(person, JPEG bytes) of every photo of :data:`SETS`, cropped to ``size``'s aspect and resized."""
    root = faces_dir()
    out = []
    for name in SETS:
        for path in sorted((root / name / "images").glob("*/*")):
            with Image.open(path) as im:
                image = ImageOps.fit(
                    ImageOps.exif_transpose(im).convert("RGB"), size, Image.Resampling.LANCZOS
                )
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=90)
            out.append((f"{name}/{path.parent.name}", buf.getvalue()))
    return out


def timed(
    fn: Callable[[bytes], Any], photos: list[bytes], callers: int, label: str
) -> tuple[list[Any], dict[str, float]]:
    """``fn`` on every photo, ``callers`` at a time: the answers and photos/s, p50 and p99 (ms)."""
    progress = Progress(len(photos), label)

    def one(photo: bytes) -> tuple[Any, float]:
        t0 = time.perf_counter()
        answer = fn(photo)
        progress.update()
        return answer, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        done = list(pool.map(one, photos))
    seconds = time.perf_counter() - t0
    latency = np.array([s for _, s in done]) * 1000
    figures = {
        "photos_per_second": len(photos) / seconds,
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
    }
    return [a for a, _ in done], figures


def identify_one(client: FaceIdClient, gallery: str, photo: bytes) -> list[FaceMatches]:
    return client.identify(gallery, photo=photo, top_k=1)


def detector_alone(mode: str, photos: list[bytes]) -> float:
    """Milliseconds per photo of the mode's detector in process, one thread (decoded beforehand)."""
    import torch

    from faceid.engine.config import DecodeConfig, DetectConfig
    from faceid.engine.vision.detect import FaceDetector
    from faceid.engine.vision.image import decode_image

    detector, upsample, retry = [*mode.split(":"), "0", "0"][:3]
    config = DetectConfig(
        detector=detector,  # type: ignore[arg-type]
        device="cpu",
        upsample=int(upsample),
        retry_upsample=int(retry),
    )
    found = FaceDetector(config)
    images = [decode_image(p, DecodeConfig()) for p in photos]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found.find_boxes(images[0])  # warm-up
        t0 = time.perf_counter()
        for image in images:
            found.find_boxes(image)
        return (time.perf_counter() - t0) / len(images) * 1000
    finally:
        torch.set_num_threads(threads)


def run_mode(
    mode: str, sizes: list[tuple[int, int]], callers: int, rounds: int, data: Path
) -> dict[str, Any]:
    server = spawn(data / mode.replace(":", "_"), env=mode_settings(mode))
    result: dict[str, Any] = {}
    try:
        with FaceIdClient(server.address, timeout=300, api_key=server.admin_key) as client:
            for w, h in sizes:
                photos = photos_at((w, h))
                gallery = f"g{w}x{h}"
                client.create_gallery(gallery)
                first: dict[str, bytes] = {}
                for person, photo in photos:
                    first.setdefault(person, photo)
                for person, photo in first.items():
                    with contextlib.suppress(FaceIdClientError):  # no face: that person is not enrolled
                        client.enroll(gallery, person, photo=photo)
                data_only = [p for _, p in photos] * rounds
                client.embed(data_only[0])  # models loaded before the clock
                answers, embed = timed(client.embed, data_only, callers, f"embed {mode} {w}×{h}")
                embed["photos"] = len(data_only)
                embed["photos_without_face"] = sum(
                    not any(isinstance(f, DetectedFace) for f in a) for a in answers[: len(photos)]
                )
                found, identify = timed(
                    functools.partial(identify_one, client, gallery),
                    [p for _, p in photos],
                    callers,
                    f"identify {mode} {w}×{h}",
                )
                identify["photos"] = len(photos)
                identify["own_person_first"] = sum(
                    any(m.matches and m.matches[0].identity_id == person for m in f)
                    for (person, _), f in zip(photos, found, strict=True)
                )
                result[f"{w}x{h}"] = {
                    "embed": embed,
                    "identify": identify,
                    "detector_alone_ms": detector_alone(mode, [p for _, p in photos]),
                }
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="hog:1:0,cnn:0:1,cascade:0:1")
    parser.add_argument("--sizes", default="640x480,1920x1080")
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="photo_throughput")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    sizes = [(int(w), int(h)) for w, h in (s.split("x") for s in args.sizes.split(","))]
    print(
        f"photo throughput: modes {modes}, sizes {args.sizes}, sets {SETS}, {args.callers} callers, "
        f"{args.rounds} rounds"
    )
    print(f"machine: {machine()}")
    data = Path(tempfile.mkdtemp(prefix="faceid-photos-"))
    results = {mode: run_mode(mode, sizes, args.callers, args.rounds, data) for mode in modes}
    print(
        f"{'mode':<12} {'size':<10} {'embed/s':>8} {'p50':>7} {'p99':>7} {'no face':>8} "
        f"{'identify/s':>10} {'p50':>7} {'p99':>7} {'own first':>9} {'alone ms':>9}"
    )
    for mode, per_size in results.items():
        for size, r in per_size.items():
            e, i = r["embed"], r["identify"]
            no_face, own = (
                f"{e['photos_without_face']}/{i['photos']}",
                f"{i['own_person_first']}/{i['photos']}",
            )
            print(
                f"{mode:<12} {size:<10} {e['photos_per_second']:8.1f} {e['p50_ms']:7.0f} {e['p99_ms']:7.0f} "
                f"{no_face:>8} {i['photos_per_second']:10.1f} {i['p50_ms']:7.0f} {i['p99_ms']:7.0f} "
                f"{own:>9} {r['detector_alone_ms']:9.0f}"
            )
    write_json(
        args.out / f"{args.name}.json",
        {
            "benchmark": "photo_throughput",
            "callers": args.callers,
            "rounds": args.rounds,
            "sets": SETS,
            "results": results,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
