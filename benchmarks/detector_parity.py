"""dlib's MMOD CNN face detector against faceid's torch port, on the same photos in the same run.

Prints and writes (JSON): photos, faces dlib found, faces we found, the share of photos where both
found as many, the share of dlib's detections matched by one of ours at IoU ≥ 0.9 (one to one), the
largest score difference over matched pairs, and seconds per photo for each detector (model loading
excluded; each detector sees the photos one at a time, as ``dlib.cnn_face_detection_model_v1``'s
``__call__(image, upsample)`` does, the two interleaved photo by photo).  ``--limit`` photos are taken
evenly spaced over the sorted matches.  ``--size 640x480`` resizes every photo first (for timing).

    python -m faceid.benchmarks.detector_parity [--glob 'cfp_dev/images/*/*.jpg'] [--limit 200]
        [--upsample 0] [--size 640x480] [--repeat 3] [--device cpu]
        [--out benchmarks/results/detector_parity.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import dlib
import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from faceid.benchmarks.common import Progress, faces_dir, machine, write_json
from faceid.engine.vision.mmod import Detection, MmodDetector, default_path

MATCH_IOU = 0.9


def photo_paths(pattern: str, limit: int) -> list[Path]:
    """Photos matching ``pattern`` (under the shared face sets, or absolute): ``limit`` of them, evenly
    spaced over the sorted list (so a set's later people and poses are sampled too)."""
    root = Path("/") if pattern.startswith("/") else faces_dir()
    paths = sorted(root.glob(pattern.lstrip("/")))
    if len(paths) <= limit:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]


def parse_size(text: str) -> tuple[int, int] | None:
    """``"640x480"`` → (640, 480); empty → None."""
    if not text:
        return None
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def load(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image)


def dlib_detections(detector: Any, image: np.ndarray, upsample: int) -> list[Detection]:
    """dlib's detections, boxes as (left, top, right + 1, bottom + 1)."""
    return [
        ((d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1), d.confidence)
        for d in detector(image, upsample)
    ]


def run_both(
    images: list[np.ndarray], upsample: int, device: str, repeat: int = 1
) -> tuple[list[list[Detection]], list[list[Detection]], float, float]:
    """Both detectors photo by photo, interleaved (so a change in the machine's load hits both alike):
    dlib's detections, ours, and each one's seconds in all (per photo the fastest of ``repeat`` runs)."""
    theirs = dlib.cnn_face_detection_model_v1(str(default_path()))
    ours = MmodDetector(device=device)
    ours.detect(images[0], upsample)  # warm-up (the first torch call sets up its kernels)
    expected, got = [], []
    dlib_seconds = our_seconds = 0.0
    progress = Progress(len(images), "photos")
    for image in images:
        dlib_best = our_best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            mine = dlib_detections(theirs, image, upsample)
            middle = time.perf_counter()
            found = ours.detect(image, upsample)
            dlib_best = min(dlib_best, middle - start)
            our_best = min(our_best, time.perf_counter() - middle)
        expected.append(mine)
        got.append(found)
        dlib_seconds += dlib_best
        our_seconds += our_best
        progress.update()
    return expected, got, dlib_seconds, our_seconds


def iou_matrix(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4); boxes right/bottom exclusive."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inner = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    iou: npt.NDArray[np.float64] = inner / np.maximum(area_a[:, None] + area_b[None, :] - inner, 1e-9)
    return iou


def match(expected: list[Detection], got: list[Detection]) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (expected index, got index, IoU), best IoU first, IoU ≥ MATCH_IOU."""
    if not expected or not got:
        return []
    iou = iou_matrix(np.array([e[0] for e in expected], float), np.array([g[0] for g in got], float))
    pairs = []
    while iou.size and iou.max() >= MATCH_IOU:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        pairs.append((int(i), int(j), float(iou[i, j])))
        iou[i, :], iou[:, j] = -1, -1
    return pairs


def compare(expected: list[list[Detection]], got: list[list[Detection]]) -> dict[str, Any]:
    """The parity figures over all photos."""
    matched = 0
    score_diffs: list[float] = []
    ious: list[float] = []
    mismatched_photos: list[int] = []
    for k, (e, g) in enumerate(zip(expected, got, strict=True)):
        pairs = match(e, g)
        matched += len(pairs)
        score_diffs += [abs(e[i][1] - g[j][1]) for i, j, _ in pairs]
        ious += [v for *_, v in pairs]
        if len(e) != len(g) or len(pairs) != len(e):
            mismatched_photos.append(k)
    n_dlib = sum(len(e) for e in expected)
    return {
        "photos": len(expected),
        "dlib_faces": n_dlib,
        "our_faces": sum(len(g) for g in got),
        "same_count_share": float(np.mean([len(e) == len(g) for e, g in zip(expected, got, strict=True)])),
        "matched_share": matched / n_dlib if n_dlib else 1.0,
        "min_matched_iou": min(ious, default=float("nan")),
        "max_score_diff": max(score_diffs, default=0.0),
        "mean_score_diff": float(np.mean(score_diffs)) if score_diffs else 0.0,
        "mismatched_photos": mismatched_photos,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--glob", default="cfp_dev/images/*/*.jpg", help="photos, relative to the face sets")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--upsample", type=int, default=0)
    parser.add_argument("--size", default="", help="resize every photo to WxH first, e.g. 640x480")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--repeat", type=int, default=1, help="time each photo this many times, keep the fastest"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "detector_parity.json"
    )
    args = parser.parse_args()

    size = parse_size(args.size)
    paths = photo_paths(args.glob, args.limit)
    if not paths:
        raise SystemExit(f"no photos match {args.glob!r} under {faces_dir()}")
    images = [load(p, size) for p in paths]
    params = {
        "glob": args.glob,
        "limit": args.limit,
        "upsample": args.upsample,
        "size": args.size or "as is",
        "repeat": args.repeat,
        "torch_threads": torch.get_num_threads(),
    }
    print("parameters:", params, f"({len(images)} photos)")

    expected, got, dlib_seconds, our_seconds = run_both(images, args.upsample, args.device, args.repeat)
    figures = compare(expected, got)
    figures["mismatched_photos"] = [str(paths[k]) for k in figures["mismatched_photos"]]
    figures["dlib_seconds_per_photo"] = dlib_seconds / len(images)
    figures["our_seconds_per_photo"] = our_seconds / len(images)
    for key, value in figures.items():
        print(f"  {key}: {value}")
    write_json(
        args.out, {"parameters": params, "figures": figures, "machine": machine(), "device": args.device}
    )


if __name__ == "__main__":
    main()
