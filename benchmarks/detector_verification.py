"""Verification through the public API with each face detector, side by side, in one run.

For each detector mode (``pipeline.detect.detector``: hog, cnn, cascade) a server is spawned with
that setting and every photo of the pair sets is embedded with the Embed call (the face nearest
the photo's centre is the subject).  Every pair is scored: a photo in which no face is found
makes its pairs "different" (distance 2, the largest there is); no fallback a caller would not get.
Per pair set: accuracy over its folds (threshold chosen on the other folds), TAR at FAR 1e-3, the
photos without a face, photos/s through Embed; a ROC plot with one curve per mode.

    python -m faceid.benchmarks.detector_verification [--sets cfp_dev/pairs_FP.csv,cfp_dev/pairs_FF.csv] \\
        [--detectors hog,cnn,cascade] [--limit 0] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceid.benchmarks.accuracy import MISSING, embed_photo
from faceid.benchmarks.common import (
    Pair,
    Progress,
    faces_dir,
    first_pairs,
    kfold_accuracy,
    machine,
    read_pairs,
    roc,
    tar_at_far,
    write_json,
)
from faceid.client.client import FaceIdClient
from faceid.server.app import spawn


def embed_all(client: FaceIdClient, paths: list[Path], label: str) -> tuple[npt.NDArray[np.float32], float]:
    """Embeddings (NaN rows: no face found) and seconds, 4 calls in flight (the server batches)."""
    out = np.full((len(paths), 128), np.nan, np.float32)
    progress = Progress(len(paths), label)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for i, vector in enumerate(pool.map(lambda p: embed_photo(client, p), paths)):
            if vector is not None:
                out[i] = vector
            progress.update()
    return out, time.perf_counter() - t0


def score(pairs: list[Pair], vectors: npt.NDArray[np.float32], index: dict[Path, int]) -> dict[str, Any]:
    a = np.array([index[p.path1] for p in pairs])
    b = np.array([index[p.path2] for p in pairs])
    d = np.linalg.norm(vectors[a].astype(np.float64) - vectors[b], axis=1)
    d[np.isnan(d)] = MISSING
    same = np.array([p.same for p in pairs])
    mean, std, per_fold = kfold_accuracy(d, same, np.array([p.fold for p in pairs]))
    far, tar, _ = roc(d, same)
    return {
        "pairs": len(pairs),
        "accuracy_mean": mean,
        "accuracy_std": std,
        "per_fold": per_fold,
        "tar_at_far_1e-3": tar_at_far(d, same, 1e-3),
        "roc": [far.tolist(), tar.tolist()],
    }


def run_mode(detector: str, sets: dict[str, list[Pair]], data: Path) -> dict[str, Any]:
    paths = sorted({p for pairs in sets.values() for q in pairs for p in (q.path1, q.path2)})
    index = {p: i for i, p in enumerate(paths)}
    server = spawn(data / detector, env={"FACEID_PIPELINE__DETECT__DETECTOR": detector})
    try:
        with FaceIdClient(server.address, timeout=300, api_key=server.admin_key) as client:
            client.embed(paths[0].read_bytes())  # load the models before the clock
            vectors, seconds = embed_all(client, paths, f"embed ({detector})")
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    no_face = np.isnan(vectors[:, 0])
    result: dict[str, Any] = {
        "photos": len(paths),
        "photos_without_face": int(no_face.sum()),
        "photos_per_second": len(paths) / seconds,
        "sets": {},
    }
    for name, pairs in sets.items():
        in_set = sorted({index[p] for q in pairs for p in (q.path1, q.path2)})
        r = score(pairs, vectors, index)
        r["photos_without_face"] = int(no_face[in_set].sum())
        r["photos"] = len(in_set)
        result["sets"][name] = r
    return result


def plot(results: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(results.values()))["sets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for detector, r in results.items():
            s = r["sets"][name]
            far, tar = s["roc"]
            label = f"{detector}: {s['accuracy_mean']:.3f}, no face {s['photos_without_face']}/{s['photos']}"
            ax.plot(np.maximum(far, 1e-4), tar, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(f"{name} through the API")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", default="cfp_dev/pairs_FP.csv,cfp_dev/pairs_FF.csv")
    parser.add_argument("--detectors", default="hog,cnn,cascade")
    parser.add_argument("--limit", type=int, default=0, help="first N pairs of each fold (0: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="detector_verification")
    args = parser.parse_args(argv)
    root = faces_dir()
    sets = {name: first_pairs(read_pairs(root / name), args.limit) for name in args.sets.split(",")}
    detectors = args.detectors.split(",")
    print(
        f"detector verification: sets {list(sets)}, detectors {detectors}, "
        f"pairs per fold {args.limit or 'all'}"
    )
    print(f"machine: {machine()}")
    data = Path(tempfile.mkdtemp(prefix="faceid-detectors-"))  # fresh: each server prints its admin key
    results = {d: run_mode(d, sets, data) for d in detectors}
    for name in sets:
        for d, r in results.items():
            s = r["sets"][name]
            print(
                f"{name:<22} {d:<8} accuracy {s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f}  "
                f"TAR@FAR=1e-3 {s['tar_at_far_1e-3']:.4f}  no face {s['photos_without_face']}/{s['photos']}"
            )
    for d, r in results.items():
        print(f"{d:<8} {r['photos_per_second']:.1f} photos/s through Embed ({r['photos']} photos)")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / f"{args.name}.png")
    for r in results.values():
        for s in r["sets"].values():
            s.pop("roc")
    payload = {
        "benchmark": "detector_verification",
        "limit": args.limit,
        "results": results,
        "machine": machine(),
    }
    write_json(args.out / f"{args.name}.json", payload)


if __name__ == "__main__":
    main()
