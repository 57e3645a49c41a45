"""LFW View 2 verification through faceid's pipeline, beside dlib's own pipeline.

Protocol: the 6,000 pairs of ``pairs.csv`` in 10 folds; for each fold the
distance threshold is chosen on the other 9 and accuracy measured on it; mean ±
standard deviation over folds.  Every pair is scored: when the detector finds no
face in an image, it looks again with a more sensitive setting (upsampling one
step more, decision threshold −0.6); when that finds nothing either, the face is
taken from a fixed box (the median of the boxes detected in the other images;
deep-funneled LFW is centred).  The counts of both are printed.  The same rule is
applied to dlib's pipeline.  When several faces are found, the one nearest the
image centre (LFW's subject) is used.

Variants (same detections for all faceid variants):
  dlib              dlib's own pipeline (HOG, 5-point, get_face_chip, compute_face_descriptor)
  faceid            our torch network on our chips, raw vectors (should equal dlib)
  faceid+flip       mean of the chip's and its mirror's embeddings
  faceid+norm       unit-length embeddings
  faceid+flip+norm  both (faceid's default)
  faceid+2crops     also a chip with padding 0.3; the mean of the two unit embeddings
                    (multi-scale test-time augmentation: twice the network work again)

    python -m faceid.benchmarks.lfw_verification [--pairs N] [--out results/]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from faceid.benchmarks.common import (
    Pair,
    Progress,
    best_threshold,
    centre_most,
    faces_dir,
    kfold_accuracy,
    machine,
    read_pairs,
    roc,
    tar_at_far,
    write_json,
)
from faceid.engine.config import EmbedConfig, PipelineConfig
from faceid.engine.domain.faces import Box
from faceid.engine.vision.align import face_chips
from faceid.engine.vision.detect import FaceDetector
from faceid.engine.vision.embedder import Embedder
from faceid.engine.vision.pipeline import FacePipeline


def median_box(boxes: list[Box], width: int, height: int) -> Box:
    if not boxes:  # nothing detected at all: the central half of the image
        return Box(width / 4, height / 4, 3 * width / 4, 3 * height / 4)
    a = np.median(np.array([[b.left, b.top, b.right, b.bottom] for b in boxes]), axis=0)
    return Box(*(float(v) for v in a))


def faceid_chips(
    pipeline: FacePipeline, paths: list[Path], paddings: tuple[float, ...] = (0.25, 0.3)
) -> tuple[list[np.ndarray], int, int]:
    """One aligned chip per image through faceid's public pipeline; counts of retries and fallbacks."""
    base = pipeline.config.detect
    sensitive = FaceDetector(replace(base, upsample=min(base.upsample + 1, 3), score_threshold=-0.6))
    images, chosen = [], []
    retried = 0
    progress = Progress(len(paths), "faceid detect")
    for path in paths:
        image = pipeline.decode(path.read_bytes())
        found = pipeline.detect(image)
        if not found:
            retried += 1
            found = sensitive.detect(image)
        images.append(image)
        chosen.append(centre_most(found, image.shape[1], image.shape[0]) if found else None)
        progress.update()
    h, w = images[0].shape[:2]
    fallback_box = median_box([d.box for d in chosen if d is not None], w, h)
    misses = sum(d is None for d in chosen)
    chips = [np.empty((len(paths), 150, 150, 3), np.uint8) for _ in paddings]
    for i, (image, det) in enumerate(zip(images, chosen, strict=True)):
        if det is None:
            det = pipeline.detection_for_box(image, fallback_box)
        for c, padding in zip(chips, paddings, strict=True):
            c[i] = face_chips(image, [(det.box, det.landmarks)], padding=padding)[0]
    return chips, retried, misses


def dlib_embeddings(paths: list[Path], upsample: int) -> tuple[np.ndarray, int, int]:
    """dlib's own pipeline, called directly (not through faceid)."""
    import dlib
    from PIL import Image

    from faceid.engine.vision.weights import LANDMARKS_5_FILE, RESNET_FILE, model_file

    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(str(model_file(LANDMARKS_5_FILE)))
    net = dlib.face_recognition_model_v1(str(model_file(RESNET_FILE)))
    found: list[Any] = []
    images = []
    progress = Progress(len(paths), "dlib detect")
    retried = 0
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        rects = list(detector(image, upsample))
        if not rects:
            retried += 1
            rects = list(detector.run(image, min(upsample + 1, 3), -0.6)[0])
        cx, cy = image.shape[1] / 2, image.shape[0] / 2
        found.append(
            min(rects, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2) if rects else None
        )
        images.append(image)
        progress.update()
    ok = [r for r in found if r is not None]
    med = np.median([[r.left(), r.top(), r.right(), r.bottom()] for r in ok], axis=0).astype(int)
    fallback = dlib.rectangle(*(int(v) for v in med))
    chips = [
        dlib.get_face_chip(img, shape(img, r or fallback), 150, 0.25)
        for img, r in zip(images, found, strict=True)
    ]
    out = np.empty((len(chips), 128), np.float32)
    progress = Progress(len(chips), "dlib descriptors")
    step = 64
    for i in range(0, len(chips), step):
        out[i : i + step] = np.array(net.compute_face_descriptor(chips[i : i + step]))
        progress.update(len(chips[i : i + step]))
    return out, retried, sum(r is None for r in found)


def pair_distances(emb: dict[Path, int], v: np.ndarray, pairs: list[Pair]) -> np.ndarray:
    a = np.array([emb[p.path1] for p in pairs])
    b = np.array([emb[p.path2] for p in pairs])
    distances: np.ndarray = np.linalg.norm(v[a].astype(np.float64) - v[b], axis=1)
    return distances


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (far, tar) in curves.items():
        ax.plot(np.maximum(far, 1e-4), tar, label=name, linestyle="--" if name == "dlib" else "-")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0.8, 1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("LFW View 2 (6,000 pairs), deep-funneled")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="face data folder (default $FACEID_FACES_DIR or ../shared/data/faces)",
    )
    ap.add_argument(
        "--pairs", type=int, default=0, help="use only the first N pairs of each fold (0: all 600)"
    )
    ap.add_argument("--upsample", type=int, default=1, help="detector upsampling for both pipelines")
    ap.add_argument("--skip-dlib", action="store_true", help="do not run dlib's own pipeline")
    ap.add_argument("--out", type=Path, default=Path("results"), help="folder for JSON and PNG")
    args = ap.parse_args(argv)

    data = (args.data or faces_dir()) / "lfw"
    pairs = read_pairs(data / "pairs.csv")
    if args.pairs:
        pairs = [
            p
            for f in sorted({p.fold for p in pairs})
            for p in [q for q in pairs if q.fold == f][: args.pairs]
        ]
    paths = sorted({p.path1 for p in pairs} | {p.path2 for p in pairs})
    index = {p: i for i, p in enumerate(paths)}
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    print(
        f"LFW View 2: {len(pairs)} pairs ({same.sum()} same), {len(paths)} images, "
        f"detector upsample {args.upsample}"
    )
    print(f"machine: {machine()}")

    config = PipelineConfig()
    config = replace(config, detect=replace(config.detect, upsample=args.upsample))
    pipeline = FacePipeline(config)
    t0 = time.perf_counter()
    chips, retried, misses = faceid_chips(pipeline, paths)
    t_detect = time.perf_counter() - t0
    vectors: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    combos = (
        ("faceid", False, False),
        ("faceid+flip", True, False),
        ("faceid+norm", False, True),
        ("faceid+flip+norm", True, True),
    )
    for name, flip, normalize in combos:
        embedder = Embedder(EmbedConfig(flip=flip, normalize=normalize))
        t0 = time.perf_counter()
        vectors[name] = embedder.embed(chips[0])
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    wide = Embedder(EmbedConfig()).embed(chips[1])
    both = vectors["faceid+flip+norm"] + wide
    vectors["faceid+2crops"] = both / np.linalg.norm(both, axis=1, keepdims=True)
    timings["faceid+2crops"] = timings["faceid+flip+norm"] + time.perf_counter() - t0
    dlib_retried = dlib_misses = None
    if not args.skip_dlib:
        t0 = time.perf_counter()
        vectors["dlib"], dlib_retried, dlib_misses = dlib_embeddings(paths, args.upsample)
        timings["dlib"] = time.perf_counter() - t0

    results: dict[str, Any] = {}
    curves = {}
    print(
        f"\nimages without a face at the default setting: faceid {retried}, dlib {dlib_retried}; "
        f"still none with the sensitive setting (fixed box used): faceid {misses}, dlib {dlib_misses}"
    )
    print(f"{'variant':<18} {'accuracy':>17} {'TAR@FAR=1e-3':>13} {'threshold':>10} {'embed s':>8}")
    for name in vectors:
        d = pair_distances(index, vectors[name], pairs)
        mean, std, per_fold = kfold_accuracy(d, same, folds)
        threshold = best_threshold(d, same)
        tar = tar_at_far(d, same, 1e-3)
        far, tarc, _ = roc(d, same)
        curves[name] = (far, tarc)
        results[name] = {
            "accuracy_mean": mean,
            "accuracy_std": std,
            "per_fold": per_fold,
            "tar_at_far_1e-3": tar,
            "best_threshold_all_folds": threshold,
            "embed_seconds": timings.get(name),
        }
        print(
            f"{name:<18} {mean:.4f} ± {std:.4f} {tar:>13.4f} {threshold:>10.3f} {timings.get(name, 0):>8.1f}"
        )
    payload = {
        "benchmark": "lfw_verification",
        "pairs": len(pairs),
        "images": len(paths),
        "upsample": args.upsample,
        "faceid_retried_images": retried,
        "faceid_fallback_images": misses,
        "dlib_retried_images": dlib_retried,
        "dlib_fallback_images": dlib_misses,
        "faceid_detect_seconds": t_detect,
        "variants": results,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "lfw_verification.json", payload)
    plot_roc(curves, args.out / "lfw_roc.png")
    return payload


if __name__ == "__main__":
    main()
