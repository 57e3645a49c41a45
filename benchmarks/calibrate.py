"""Decision thresholds of an embedding model, calibrated on LFW.

Impostor pairs: every pair of LFW photos of two different people (≈ 87 million);
genuine pairs: every pair of photos of the same person (≈ 240 thousand).  For
each target false-match rate the threshold is the distance below which that
fraction of impostor pairs falls; the true-match rate at it is printed beside it.
The table goes into ``engine/models.py`` with this command:

    python -m faceid.benchmarks.calibrate [--fmr 1e-3,1e-4]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from faceid.benchmarks.common import machine, write_json
from faceid.benchmarks.synthetic import embed_lfw


def pair_distances(
    vectors: np.ndarray, labels: np.ndarray, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """All genuine distances, and all impostor distances (upper triangle, float32)."""
    genuine, impostor = [], []
    sq = np.sum(vectors.astype(np.float64) ** 2, axis=1)
    for start in range(0, len(vectors), chunk):
        block = vectors[start : start + chunk].astype(np.float64)
        d2 = sq[start : start + chunk, None] + sq[None, :] - 2 * block @ vectors.T.astype(np.float64)
        d = np.sqrt(np.maximum(d2, 0)).astype(np.float32)
        rows = np.arange(start, start + len(block))[:, None]
        upper = np.arange(len(vectors))[None, :] > rows
        same = labels[start : start + chunk, None] == labels[None, :]
        genuine.append(d[upper & same])
        impostor.append(d[upper & ~same])
    return np.concatenate(genuine), np.concatenate(impostor)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fmr", default="1e-2,1e-3,1e-4,1e-5")
    ap.add_argument("--cache", type=Path, default=Path("results/lfw_embeddings.npz"))
    ap.add_argument("--lfw-limit", type=int, default=0, help="use only the first N LFW images (quick runs)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    lfw = embed_lfw(cache=args.cache, limit=args.lfw_limit)
    genuine, impostor = pair_distances(lfw.vectors, lfw.labels)
    print(f"LFW: {len(genuine):,} genuine and {len(impostor):,} impostor pairs")
    print(f"{'FMR':>8} {'threshold':>10} {'TMR':>8}")
    table = []
    for fmr in (float(x) for x in args.fmr.split(",")):
        threshold = float(np.quantile(impostor, fmr))
        tmr = float(np.mean(genuine < threshold))
        table.append({"fmr": fmr, "threshold": threshold, "tmr": tmr})
        print(f"{fmr:>8.0e} {threshold:>10.4f} {tmr:>8.4f}")
    payload = {
        "benchmark": "calibrate",
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
        "table": table,
        "machine": machine(),
    }
    write_json(args.out / "calibrate.json", payload)
    return payload


if __name__ == "__main__":
    main()
