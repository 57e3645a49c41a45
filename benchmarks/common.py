"""Helpers shared by the benchmarks: data location, LFW protocol files, metrics, reports."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

#: Where the labelled face sets live; override with FACEID_FACES_DIR.
FACES_ENV = "FACEID_FACES_DIR"
_REPO = Path(__file__).resolve().parent.parent


def faces_dir() -> Path:
    """The shared face data folder: $FACEID_FACES_DIR, else ../shared/data/faces beside the repo."""
    env = os.environ.get(FACES_ENV)
    return Path(env) if env else (_REPO.parent / "shared" / "data" / "faces")


def unit_vectors(n: int, seed: int) -> npt.NDArray[np.float32]:
    """``n`` random 128-D unit vectors, uniform on the sphere (no face-like structure)."""
    v = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


@dataclass(frozen=True)
class Pair:
    fold: int
    same: bool
    path1: Path
    path2: Path


def read_pairs(csv_path: Path) -> list[Pair]:
    """A pairs CSV (``fold,label,path1,path2``; paths relative to the CSV's folder)."""
    root = csv_path.parent
    with csv_path.open(newline="") as f:
        return [
            Pair(int(row["fold"]), row["label"] == "1", root / row["path1"], root / row["path2"])
            for row in csv.DictReader(f)
        ]


class _Box(Protocol):
    @property
    def left(self) -> float: ...
    @property
    def top(self) -> float: ...
    @property
    def right(self) -> float: ...
    @property
    def bottom(self) -> float: ...


class _HasBox(Protocol):
    @property
    def box(self) -> _Box: ...


FaceT = TypeVar("FaceT", bound=_HasBox)


def first_pairs(pairs: list[Pair], limit: int) -> list[Pair]:
    """The first ``limit // 2`` same and ``limit // 2`` different pairs of each fold (all with 0):
    the files list a fold's same pairs first, so its first ``limit`` pairs would all be same."""
    if not limit:
        return pairs
    return [
        p
        for f in sorted({p.fold for p in pairs})
        for same in (True, False)
        for p in [q for q in pairs if q.fold == f and q.same == same][: limit // 2]
    ]


def centre_most(faces: list[FaceT], width: float, height: float) -> FaceT:
    """The face nearest the photo's centre: LFW's subject (engine detections or client results)."""
    cx, cy = width / 2, height / 2
    return min(
        faces,
        key=lambda f: ((f.box.left + f.box.right) / 2 - cx) ** 2 + ((f.box.top + f.box.bottom) / 2 - cy) ** 2,
    )


def kfold_accuracy(
    distances: npt.NDArray[np.float64], same: npt.NDArray[np.bool_], folds: npt.NDArray[np.int64]
) -> tuple[float, float, list[float]]:
    """LFW View 2: per held-out fold, the threshold that maximises accuracy on the other folds.

    Returns (mean, standard deviation, per-fold accuracies).  Distances: smaller = more alike.
    """
    accuracies = []
    for fold in np.unique(folds):
        train = folds != fold
        threshold = best_threshold(distances[train], same[train])
        test = ~train
        accuracies.append(float(np.mean((distances[test] < threshold) == same[test])))
    return float(np.mean(accuracies)), float(np.std(accuracies)), accuracies


def best_threshold(distances: npt.NDArray[np.float64], same: npt.NDArray[np.bool_]) -> float:
    """The distance threshold (accept below) with the highest accuracy on these pairs."""
    order = np.argsort(distances)
    d, s = distances[order], same[order]
    # accepting the first i pairs: correct = positives among them + negatives after them
    correct = np.concatenate([[0], np.cumsum(s)]) + (np.sum(~s) - np.concatenate([[0], np.cumsum(~s)]))
    i = int(np.argmax(correct))
    if i == 0:
        return float(d[0]) - 1e-6
    if i == len(d):
        return float(d[-1]) + 1e-6
    return float((d[i - 1] + d[i]) / 2)


def roc(
    distances: npt.NDArray[np.float64], same: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(FAR, TAR, threshold) for every distinct threshold, accepting pairs with distance ≤ threshold."""
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    tar = np.cumsum(s) / max(int(s.sum()), 1)
    far = np.cumsum(~s) / max(int((~s).sum()), 1)
    return far, tar, d


def tar_at_far(distances: npt.NDArray[np.float64], same: npt.NDArray[np.bool_], far_target: float) -> float:
    """True accept rate at the largest threshold whose false accept rate is ≤ ``far_target``."""
    far, tar, _ = roc(distances, same)
    ok = far <= far_target
    return float(tar[ok].max()) if ok.any() else 0.0


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": _git_commit(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")


class Progress:
    """A one-line progress report on stderr: done/total, rate, time left."""

    def __init__(self, total: int, label: str, every: float = 2.0) -> None:
        self.tty = sys.stderr.isatty()
        self.total, self.label = total, label
        self.every = every if self.tty else max(every, 15.0)  # logs get a line every 15 s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate else float("inf")
            line = f"{self.label}: {self.done}/{self.total} ({rate:.1f}/s, {left:.0f} s left)"
            if self.tty:
                end = "" if self.done < self.total else "\n"
                print(f"\r{line}   ", end=end, file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)
