"""Verification through the public API with each face detector, side by side, in one run.

A mode is ``DETECTOR:UPSAMPLE:RETRY`` (``pipeline.detect.detector``, ``.upsample``,
``.retry_upsample``; ``hog:1:0`` is the HOG path before issue 17, ``cnn:0:1`` the default since).
For each mode a server is spawned with those settings and every photo of the pair sets is embedded
with the Embed call; each face rule (``face_rule``: the largest face, Embed's first, or the one
nearest the photo's centre) picks the photo's subject from the same answer.  Every pair is scored: a
photo in which no face is found makes its pairs "different" (distance 2, the largest there is); no
fallback a caller would not get.  Per pair set, mode and rule: accuracy over its folds (threshold
chosen on the other folds), TAR at FAR 1e-3, the photos without a face; per mode photos/s through
Embed (4 calls in flight); a ROC plot with one curve per mode and rule.

    python -m faceid.benchmarks.detector_verification [--sets cfp_dev/pairs_FP.csv,cfp_dev/pairs_FF.csv] \\
        [--modes hog:1:0,cnn:0:1,cascade:0:1] [--limit 0] [--out benchmarks/results]
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

from faceid.benchmarks.accuracy import MISSING, embed_photo_rules
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

RULES = ("centre", "largest")


def embed_all(
    client: FaceIdClient, paths: list[Path], label: str
) -> tuple[dict[str, npt.NDArray[np.float32]], float]:
    """Embeddings per face rule (NaN rows: no face found) and seconds, 4 calls in flight (the
    server batches)."""
    out = {rule: np.full((len(paths), 128), np.nan, np.float32) for rule in RULES}
    progress = Progress(len(paths), label)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for i, found in enumerate(pool.map(lambda p: embed_photo_rules(client, p), paths)):
            if found is not None:
                for rule in RULES:
                    out[rule][i] = found[rule]
            progress.update()
    return out, time.perf_counter() - t0


def mode_settings(mode: str) -> dict[str, str]:
    """The server's environment for ``DETECTOR[:UPSAMPLE[:RETRY]]``."""
    detector, *rest = mode.split(":")
    names = ("FACEID_PIPELINE__DETECT__UPSAMPLE", "FACEID_PIPELINE__DETECT__RETRY_UPSAMPLE")
    return {"FACEID_PIPELINE__DETECT__DETECTOR": detector, **dict(zip(names, rest, strict=False))}


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


def run_mode(mode: str, sets: dict[str, list[Pair]], data: Path) -> dict[str, Any]:
    paths = sorted({p for pairs in sets.values() for q in pairs for p in (q.path1, q.path2)})
    index = {p: i for i, p in enumerate(paths)}
    server = spawn(data / mode.replace(":", "_"), env=mode_settings(mode))
    try:
        with FaceIdClient(server.address, timeout=300, api_key=server.admin_key) as client:
            client.embed(paths[0].read_bytes())  # load the models before the clock
            vectors, seconds = embed_all(client, paths, f"embed ({mode})")
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    no_face = np.isnan(vectors[RULES[0]][:, 0])
    result: dict[str, Any] = {
        "photos": len(paths),
        "photos_without_face": int(no_face.sum()),
        "photos_per_second": len(paths) / seconds,
        "rules": {},
    }
    for rule in RULES:
        per_set: dict[str, Any] = {}
        for name, pairs in sets.items():
            in_set = sorted({index[p] for q in pairs for p in (q.path1, q.path2)})
            r = score(pairs, vectors[rule], index)
            r["photos_without_face"] = int(no_face[in_set].sum())
            r["photos"] = len(in_set)
            per_set[name] = r
        result["rules"][rule] = per_set
    return result


def plot(results: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(results.values()))["rules"][RULES[0]])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for n, (mode, r) in enumerate(results.items()):
            for rule, style in zip(RULES, ("-", ":"), strict=True):
                s = r["rules"][rule][name]
                far, tar = s["roc"]
                missing = f"no face {s['photos_without_face']}/{s['photos']}"
                label = f"{mode} {rule}: {s['accuracy_mean']:.3f}, {missing}"
                ax.plot(np.maximum(far, 1e-4), tar, style, color=f"C{n}", label=label)
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
    parser.add_argument("--modes", default="hog:1:0,cnn:0:1,cascade:0:1", help="DETECTOR:UPSAMPLE:RETRY,…")
    parser.add_argument("--limit", type=int, default=0, help="first N pairs of each fold (0: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="detector_verification")
    args = parser.parse_args(argv)
    root = faces_dir()
    sets = {name: first_pairs(read_pairs(root / name), args.limit) for name in args.sets.split(",")}
    modes = args.modes.split(",")
    print(
        f"detector verification: sets {list(sets)}, modes {modes} (detector:upsample:retry), "
        f"face rules {list(RULES)}, pairs per fold {args.limit or 'all'}"
    )
    print(f"machine: {machine()}")
    data = Path(tempfile.mkdtemp(prefix="faceid-detectors-"))  # fresh: each server prints its admin key
    results = {mode: run_mode(mode, sets, data) for mode in modes}
    for name in sets:
        for mode, r in results.items():
            for rule in RULES:
                s = r["rules"][rule][name]
                print(
                    f"{name:<22} {mode:<12} {rule:<8} accuracy {s['accuracy_mean']:.4f} ± "
                    f"{s['accuracy_std']:.4f}  TAR@FAR=1e-3 {s['tar_at_far_1e-3']:.4f}  "
                    f"no face {s['photos_without_face']}/{s['photos']}"
                )
    for mode, r in results.items():
        print(f"{mode:<12} {r['photos_per_second']:.1f} photos/s through Embed ({r['photos']} photos)")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / f"{args.name}.png")
    for r in results.values():
        for per_set in r["rules"].values():
            for s in per_set.values():
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
