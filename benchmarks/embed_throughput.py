"""Embedder and detector throughput, faceid against dlib in the same run.

Prints and writes (JSON) faces/s of faceid's torch embedder at several batch
sizes (network forward-pass sizes: a face and its mirror count as two images),
with and without mirror averaging (which costs a second network pass),
dlib's own ``compute_face_descriptor`` on the same chips, and the HOG detector's
photos/s at typical photo sizes.  On CUDA it also measures fp16/bf16 and checks
that their embeddings stay within cosine 0.9999 of fp32.

    python -m faceid.benchmarks.embed_throughput [--batches 1,8,32,128] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceid.benchmarks.common import faces_dir, machine, write_json
from faceid.engine.config import DetectConfig, EmbedConfig, Precision
from faceid.engine.vision.embedder import Embedder


def sample_chips(n: int, chips_file: Path | None) -> tuple[np.ndarray, str]:
    """Real aligned chips when available (a .npy, or dlib_johns5), else random pixels."""
    if chips_file and chips_file.is_file():
        chips = np.load(chips_file)
        source = str(chips_file)
    else:
        folder = faces_dir() / "dlib_johns5" / "images"
        paths = sorted(folder.glob("*/*"))
        if paths:
            chips = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
            source = "dlib_johns5"
        else:
            chips = np.random.default_rng(0).integers(0, 256, (64, 150, 150, 3), dtype=np.uint8)
            source = "random pixels"
    reps = -(-n // len(chips))
    return np.ascontiguousarray(np.tile(chips, (reps, 1, 1, 1))[:n]), source


def rate(fn: Any, items: int, seconds: float) -> float:
    """Items per second of ``fn()`` (which handles ``items`` items), after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return calls * items / elapsed


def bench_embedder(
    chips: np.ndarray, batches: list[int], seconds: float, device: str, weights: Path | None
) -> list[dict[str, Any]]:
    rows = []
    precisions: list[Precision] = ["fp32"]
    if device.startswith("cuda"):
        precisions += ["fp16", "bf16"]
    for precision in precisions:
        for flip in (False, True):
            for b in batches:
                config = EmbedConfig(device=device, precision=precision, batch_size=b, flip=flip)
                emb = Embedder(config, weights)
                batch = chips[: max(b, min(len(chips), 4 * b))]
                fps = rate(lambda e=emb, x=batch: e.embed(x), len(batch), seconds)
                rows.append(
                    {"device": device, "precision": precision, "flip": flip, "batch": b, "faces_per_s": fps}
                )
                print(f"faceid  {device:<5} {precision:<5} flip={flip!s:<5} batch {b:>5}: {fps:9.1f} faces/s")
    return rows


def precision_agreement(chips: np.ndarray, device: str, weights: Path | None) -> dict[str, float]:
    ref = Embedder(EmbedConfig(device=device, precision="fp32", flip=False), weights).embed(chips)
    cpu = Embedder(EmbedConfig(device="cpu", precision="fp32", flip=False), weights).embed(chips)
    out = {"cpu_fp32_max_abs_diff": float(np.abs(ref - cpu).max())}
    print(f"{device} fp32 vs cpu fp32 on {len(chips)} chips: max |Δ| {out['cpu_fp32_max_abs_diff']:.2e}")
    for precision in ("fp16", "bf16"):
        e = Embedder(EmbedConfig(device=device, precision=precision, flip=False), weights).embed(chips)
        cos = np.sum(ref * e, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(e, axis=1))
        out[precision] = float(cos.min())
        print(
            f"{precision} vs fp32 on {len(chips)} chips: min cosine {cos.min():.6f}, "
            f"max |Δ| {np.abs(ref - e).max():.2e}"
        )
    return out


def bench_dlib(chips: np.ndarray, seconds: float) -> float:
    import dlib

    from faceid.engine.vision.weights import RESNET_FILE, model_file

    net = dlib.face_recognition_model_v1(str(model_file(RESNET_FILE)))
    batch = list(chips[:32])
    fps = rate(lambda: net.compute_face_descriptor(batch), len(batch), seconds)
    print(f"dlib    compute_face_descriptor, batch 32: {fps:9.1f} faces/s")
    return fps


def bench_detector(seconds: float) -> list[dict[str, Any]]:
    from faceid.engine.vision.detect import FaceDetector

    source = faces_dir() / "fr_openface_examples7" / "images" / "obama" / "001.jpg"
    base = Image.open(source).convert("RGB") if source.is_file() else None
    detector = FaceDetector(DetectConfig())
    rows = []
    for w, h in ((640, 480), (1280, 720), (1920, 1080), (4032, 3024)):
        if base is not None:
            photo = np.asarray(base.resize((w, h), Image.Resampling.BILINEAR))
        else:
            photo = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        ips = rate(lambda p=photo: detector.detect(p), 1, seconds)
        rows.append({"width": w, "height": h, "photos_per_s": ips})
        print(f"detector {w}×{h}: {ips:7.1f} photos/s (upsample 1, scan capped at 2.5 MP)")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--chips", type=Path, default=None, help="a .npy of aligned chips (N,150,150,3) uint8")
    ap.add_argument(
        "--weights", type=Path, default=None, help="dlib ResNet .dat (default: the installed one)"
    )
    ap.add_argument("--skip-dlib", action="store_true")
    ap.add_argument("--skip-detector", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)

    from faceid.engine.vision.embedder import pick_device

    device = str(pick_device(args.device))
    batches = [int(b) for b in args.batches.split(",")]
    chips, source = sample_chips(max(256, 4 * max(batches)), args.chips)
    import torch

    print(
        f"embed_throughput: device {device}, torch threads {torch.get_num_threads()}, batches {batches}, "
        f"{args.seconds:g} s per figure, chips from {source}"
    )
    print(f"machine: {machine()}")
    payload: dict[str, Any] = {"benchmark": "embed_throughput", "device": device, "chips": source}
    payload["faceid"] = bench_embedder(chips, batches, args.seconds, device, args.weights)
    if device.startswith("cuda"):
        payload["precision_min_cosine"] = precision_agreement(chips[:256], device, args.weights)
    if not args.skip_dlib:
        payload["dlib_faces_per_s"] = dlib_fps = bench_dlib(chips, args.seconds)
        b32 = [r for r in payload["faceid"] if r["batch"] == 32 and r["precision"] == "fp32"]
        for r in b32:
            print(f"ratio faceid (flip={r['flip']}) / dlib at batch 32: {r['faces_per_s'] / dlib_fps:.1f}×")
    if not args.skip_detector:
        payload["detector"] = bench_detector(args.seconds)
    payload["machine"] = machine()
    write_json(args.out / "embed_throughput.json", payload)
    return payload


if __name__ == "__main__":
    main()
