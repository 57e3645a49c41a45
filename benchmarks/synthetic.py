"""Distractor face embeddings fitted to real ones, for million-scale benchmarks.

Real face embeddings are few (LFW: 13,233), so a gallery of a million is made
of synthetic identities drawn from a model fitted to real embeddings:

* identity centres ~ N(μ, Σ_between), where Σ_between is the covariance of the
  real identities' mean embeddings less the part their own sampling noise adds;
* faces of an identity = centre + s·N(0, Σ_within), Σ_within pooled from the real
  identities with two or more photos, and s a per-identity spread drawn from a
  log-normal fitted to the real identities' spreads (some people's photos vary
  more than others');
* then scaled to unit length, as faceid's embeddings are.

``python -m faceid.benchmarks.synthetic`` embeds LFW (cached), fits the model and
prints real against synthetic: quantiles of same-identity and different-identity
distances, and of the distance from a random face to its nearest other identity.

Limits: a Gaussian is smooth and unimodal; real galleries have clusters (age,
ethnicity, image quality) and heavy tails (bad photos, twins) that it does not
reproduce, and LFW's people are mostly adult public figures photographed by the
press.  Figures measured with these distractors say how the index behaves with
a million plausible faces; they are not a face-recognition accuracy claim.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceid.benchmarks.common import faces_dir, machine, write_json

Array = npt.NDArray[np.float32]
#: The model fitted to faceid's LFW embeddings (``--save-fit``), shipped so that load benchmarks can
#: draw realistic galleries on machines without the face data.
FITTED = Path(__file__).resolve().parent / "face_distribution.npz"


@dataclass
class LfwEmbeddings:
    vectors: Array  # (n, 128) faceid's default embeddings, unit length
    labels: npt.NDArray[np.int64]  # person index per vector
    names: list[str]  # person name per label
    paths: list[str]  # image path relative to lfw/images


def embed_lfw(
    data: Path | None = None, cache: Path = Path("results/lfw_embeddings.npz"), limit: int = 0
) -> LfwEmbeddings:
    """faceid's default embedding of every LFW image (cached; ~5 minutes on 2 cores the first time).

    ``limit`` keeps the first N images (in path order) for quick runs, cached separately.
    """
    if limit:
        cache = cache.with_name(f"{cache.stem}_{limit}{cache.suffix}")
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return LfwEmbeddings(z["vectors"], z["labels"], z["names"].tolist(), z["paths"].tolist())
    from faceid.benchmarks.lfw_verification import faceid_chips
    from faceid.engine.vision.pipeline import FacePipeline

    root = (data or faces_dir()) / "lfw" / "images"
    paths = sorted(root.glob("*/*.jpg"))
    if limit:
        paths = paths[:limit]
    names = sorted({p.parent.name for p in paths})
    label_of = {n: i for i, n in enumerate(names)}
    pipeline = FacePipeline()
    (chips,), retried, misses = faceid_chips(pipeline, paths, paddings=(0.25,))
    print(
        f"embedding {len(paths)} LFW images ({retried} needed the sensitive detector, {misses} the fixed box)"
    )
    vectors = pipeline.embedder.embed(chips)
    labels = np.array([label_of[p.parent.name] for p in paths], np.int64)
    rel = [str(p.relative_to(root)) for p in paths]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, labels=labels, names=np.array(names), paths=np.array(rel))
    return LfwEmbeddings(vectors, labels, names, rel)


@dataclass
class FaceDistribution:
    """The fitted model: mean and covariances, and their Cholesky factors for sampling."""

    mean: npt.NDArray[np.float64]
    between: npt.NDArray[np.float64]
    within: npt.NDArray[np.float64]
    log_spread_std: float = 0.0

    def save(self, path: Path) -> None:
        """Second-order statistics only (no embedding of any real face)."""
        np.savez(
            path, mean=self.mean, between=self.between, within=self.within, log_spread_std=self.log_spread_std
        )

    @classmethod
    def load(cls, path: Path = FITTED) -> FaceDistribution:
        z = np.load(path, allow_pickle=False)
        return cls(z["mean"], z["between"], z["within"], float(z["log_spread_std"]))

    def sample(
        self, identities: int, faces_per_identity: int, seed: int = 0
    ) -> tuple[Array, npt.NDArray[np.int64]]:
        """``identities × faces_per_identity`` unit-length embeddings and their identity numbers."""
        rng = np.random.default_rng(seed)
        dim = len(self.mean)
        lb, lw = _factor(self.between), _factor(self.within)
        out = np.empty((identities * faces_per_identity, dim), np.float32)
        ids = np.repeat(np.arange(identities, dtype=np.int64), faces_per_identity)
        step = max(1, 200_000 // faces_per_identity)
        for start in range(0, identities, step):
            m = min(step, identities - start)
            centres = self.mean + rng.standard_normal((m, lb.shape[1])) @ lb.T
            faces = np.repeat(centres, faces_per_identity, axis=0)
            spread = np.exp(rng.normal(0.0, self.log_spread_std, m) - self.log_spread_std**2 / 2)
            faces += np.repeat(spread, faces_per_identity)[:, None] * (
                rng.standard_normal((len(faces), lw.shape[1])) @ lw.T
            )
            faces /= np.linalg.norm(faces, axis=1, keepdims=True)
            out[start * faces_per_identity : (start + m) * faces_per_identity] = faces
        return out, ids


def _factor(cov: npt.NDArray[np.float64], floor: float = 1e-5) -> npt.NDArray[np.float64]:
    """``L`` with ``L Lᵀ ≈ cov``, without the directions whose variance is below ``floor`` × the
    largest.  dlib's embeddings span only ~88 of their 128 dimensions (its last layer has that rank);
    the floor :func:`_psd` adds for stability would otherwise put synthetic faces where no real
    face can be."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    keep = w > floor * w.max()
    out: npt.NDArray[np.float64] = v[:, keep] * np.sqrt(w[keep])
    return out


def _psd(matrix: npt.NDArray[np.float64], floor: float = 1e-6) -> npt.NDArray[np.float64]:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    out: npt.NDArray[np.float64] = (v * np.maximum(w, floor * w.max())) @ v.T
    return out


def fit(vectors: Array, labels: npt.NDArray[np.int64]) -> FaceDistribution:
    """Fit identity centres and within-identity spread to real embeddings."""
    x = vectors.astype(np.float64)
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, inverse, x)
    means = sums / counts[:, None]
    multi = counts[inverse] >= 2
    resid = (x - means[inverse])[multi] * np.sqrt(counts[inverse][multi] / (counts[inverse][multi] - 1))[
        :, None
    ]
    within = resid.T @ resid / len(resid)
    noise = within * np.mean(1.0 / counts)
    between = _psd(np.cov(means, rowvar=False) - noise)
    # per-identity spread: RMS residual of identities with ≥ 3 photos relative to the pooled one
    sq = np.zeros(len(uniq))
    np.add.at(sq, inverse[multi], np.sum(resid**2, axis=1))
    rich = counts >= 3
    spread = np.sqrt(sq[rich] / counts[rich] / np.trace(within))
    # minus the sampling noise of each estimate: var(log s) ≈ 1 / (2 (n − 1) d_eff)
    d_eff = np.trace(within) ** 2 / np.trace(within @ within)
    noise_var = np.mean(1.0 / (2 * (counts[rich] - 1) * d_eff))
    log_std = float(np.sqrt(max(np.var(np.log(spread)) - noise_var, 0.0)))
    return FaceDistribution(means.mean(axis=0), between, within, log_std)


def distance_quantiles(
    vectors: Array, labels: npt.NDArray[np.int64], pairs: int = 200_000, seed: int = 0
) -> dict[str, list[float]]:
    """Quantiles (1, 5, 25, 50, 75, 95, 99 %) of same- and different-identity distances."""
    rng = np.random.default_rng(seed)
    qs = [1, 5, 25, 50, 75, 95, 99]
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sizes = np.diff(np.r_[starts, len(lab)])
    multi = np.flatnonzero(sizes >= 2)
    pick = rng.choice(multi, pairs)
    a = starts[pick] + (rng.random(pairs) * sizes[pick]).astype(int)
    b = starts[pick] + (rng.random(pairs) * sizes[pick]).astype(int)
    keep = a != b
    same = np.linalg.norm(vectors[order[a[keep]]] - vectors[order[b[keep]]], axis=1)
    i, j = rng.integers(0, len(labels), (2, pairs))
    keep = labels[i] != labels[j]
    diff = np.linalg.norm(vectors[i[keep]] - vectors[j[keep]], axis=1)
    return {"same": np.percentile(same, qs).tolist(), "different": np.percentile(diff, qs).tolist()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=Path("results/lfw_embeddings.npz"))
    ap.add_argument("--lfw-limit", type=int, default=0, help="use only the first N LFW images (quick runs)")
    ap.add_argument("--identities", type=int, default=20_000)
    ap.add_argument("--faces-per-identity", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument(
        "--save-fit", type=Path, default=None, help=f"write the fitted model (e.g. {FITTED.name})"
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lfw = embed_lfw(args.data, args.cache, args.lfw_limit)
    print(
        f"LFW embeddings: {len(lfw.vectors)} faces of {len(lfw.names)} people "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    model = fit(lfw.vectors, lfw.labels)
    if args.save_fit:
        model.save(args.save_fit)
        print(f"wrote {args.save_fit}")
    print(
        f"fitted: tr(Σ_between) {np.trace(model.between):.4f}, tr(Σ_within) {np.trace(model.within):.4f}, "
        f"per-identity log-spread σ {model.log_spread_std:.3f}"
    )
    synth, synth_labels = model.sample(args.identities, args.faces_per_identity)
    real_q = distance_quantiles(lfw.vectors, lfw.labels)
    synth_q = distance_quantiles(synth, synth_labels)
    print("distance quantiles      1%     5%    25%    50%    75%    95%    99%")
    for name, q in (
        ("real same", real_q["same"]),
        ("synthetic same", synth_q["same"]),
        ("real different", real_q["different"]),
        ("synthetic different", synth_q["different"]),
    ):
        print(f"{name:<20}" + "".join(f"{v:7.3f}" for v in q))
    payload = {
        "benchmark": "synthetic",
        "real": real_q,
        "synthetic": synth_q,
        "identities": args.identities,
        "faces_per_identity": args.faces_per_identity,
        "lfw_faces": len(lfw.vectors),
        "machine": machine(),
    }
    write_json(args.out / "synthetic.json", payload)
    return payload


if __name__ == "__main__":
    main()
