"""Accuracy through faceid's public gRPC API, measured as a user would.

A server is spawned (or ``--server`` names one) and everything goes through
:class:`~faceid.client.client.FaceIdClient`: photos are embedded with the Embed
call (the face nearest the photo's centre is LFW's subject; a photo in which no
face is found counts against faceid: its pairs are "different", its probes
miss), galleries are filled with Enroll / BulkEnroll and searched with Identify.

* LFW verification, View 2: 10 folds, mean ± std accuracy, TAR at FAR 1e-3, ROC PNG.
* LFW closed-set identification (``identification_P0.csv``, eval group: 1,000 identities with one
  photo each, 2,297 probes): rank-1 and rank-5 identification rate, CMC PNG.
* Open-set identification: the eval gallery plus ``--distractors`` synthetic embeddings (fitted to
  real ones, ``synthetic.py``); mated probes = the eval probes, non-mated = photos of the 4,069 LFW
  people with a single photo; FNIR at FPIR 1e-2 and 1e-3, rank-1 with and without distractors,
  DET PNG.

    python -m faceid.benchmarks.accuracy [--distractors 1000000] [--out results/]
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceid.benchmarks.common import (
    Progress,
    centre_most,
    faces_dir,
    first_pairs,
    kfold_accuracy,
    machine,
    read_pairs,
    roc,
    tar_at_far,
    write_json,
)
from faceid.client.client import DetectedFace, FaceIdClient, enroll_request

MISSING = 2.0  # the largest distance between unit vectors: "no face found" never matches


def embed_photo_rules(client: FaceIdClient, path: Path) -> dict[str, np.ndarray] | None:
    """Through Embed, the embedding of the face each rule picks ("largest": the first, Embed
    answers largest first; "centre": nearest the photo's centre, as the server's face rules);
    None when no face is found."""
    faces = [f for f in client.embed(path.read_bytes()) if isinstance(f, DetectedFace)]
    if not faces:
        return None
    with Image.open(path) as im:  # the header gives the size; nothing is decoded
        centre = centre_most(faces, *im.size)
    return {
        "largest": np.asarray(faces[0].embedding, np.float32),
        "centre": np.asarray(centre.embedding, np.float32),
    }


def embed_photo(client: FaceIdClient, path: Path) -> np.ndarray | None:
    """The embedding of the photo's centre-most face through Embed; None when no face is found."""
    found = embed_photo_rules(client, path)
    return None if found is None else found["centre"]


def embed_photos(client: FaceIdClient, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Embedding of the centre-most face of each photo, and which photos had a face."""
    out = np.zeros((len(paths), 128), np.float32)
    found = np.zeros(len(paths), bool)
    progress = Progress(len(paths), "embed via gRPC")
    for i, path in enumerate(paths):
        vector = embed_photo(client, path)
        if vector is not None:
            out[i], found[i] = vector, True
        progress.update()
    return out, found


def verification(
    client: FaceIdClient, lfw: Path, limit: int
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    pairs = first_pairs(read_pairs(lfw / "pairs.csv"), limit)
    paths = sorted({p.path1 for p in pairs} | {p.path2 for p in pairs})
    index = {p: i for i, p in enumerate(paths)}
    vectors, found = embed_photos(client, paths)
    a = np.array([index[p.path1] for p in pairs])
    b = np.array([index[p.path2] for p in pairs])
    d = np.linalg.norm(vectors[a].astype(np.float64) - vectors[b], axis=1)
    d[~(found[a] & found[b])] = MISSING
    same = np.array([p.same for p in pairs])
    mean, std, per_fold = kfold_accuracy(d, same, np.array([p.fold for p in pairs]))
    far, tar, _ = roc(d, same)
    result = {
        "pairs": len(pairs),
        "photos_without_face": int((~found).sum()),
        "accuracy_mean": mean,
        "accuracy_std": std,
        "per_fold": per_fold,
        "tar_at_far_1e-3": tar_at_far(d, same, 1e-3),
    }
    print(
        f"verification: {mean:.4f} ± {std:.4f}, TAR@FAR=1e-3 {result['tar_at_far_1e-3']:.4f} "
        f"({result['photos_without_face']} of {len(paths)} photos without a face)"
    )
    return result, (far, tar)


def read_protocol(lfw: Path) -> dict[str, list[tuple[str, Path]]]:
    groups: dict[str, list[tuple[str, Path]]] = {}
    with (lfw / "identification_P0.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(f"{row['group']}/{row['purpose']}", []).append(
                (row["identity"], lfw / row["path"])
            )
    return groups


def singletons(lfw: Path) -> list[tuple[str, Path]]:
    people = [d for d in sorted((lfw / "images").iterdir()) if d.is_dir()]
    return [(d.name, p) for d in people if len(ps := sorted(d.glob("*.jpg"))) == 1 for p in ps]


def identify_all(
    client: FaceIdClient, gallery: str, vectors: np.ndarray, found: np.ndarray, top_k: int
) -> list[list[tuple[str, float]]]:
    out: list[list[tuple[str, float]]] = []
    progress = Progress(len(vectors), f"identify in {gallery}")
    for v, ok in zip(vectors, found, strict=True):
        if ok:
            [face] = client.identify(gallery, embedding=v.tolist(), top_k=top_k)
            out.append([(m.identity_id, m.distance) for m in face.matches])
        else:
            out.append([])
        progress.update()
    return out


def ranks(results: list[list[tuple[str, float]]], truth: list[str], k: int) -> np.ndarray:
    """CMC: fraction of probes whose identity is within the first r results, r = 1 … k."""
    hit_at = np.full(len(truth), k + 1)
    for i, (res, t) in enumerate(zip(results, truth, strict=True)):
        for r, (name, _) in enumerate(res):
            if name == t:
                hit_at[i] = r + 1
                break
    return np.array([(hit_at <= r).mean() for r in range(1, k + 1)])


def fnir_at_fpir(
    mated: list[list[tuple[str, float]]],
    truth: list[str],
    non_mated: list[list[tuple[str, float]]],
    fpir: float,
) -> tuple[float, float]:
    """(FNIR, threshold) where a fraction ``fpir`` of non-mated probes is accepted at rank 1."""
    nm = np.sort([r[0][1] if r else MISSING for r in non_mated])
    n_accept = int(np.floor(fpir * len(nm)))
    threshold = float(nm[n_accept]) if n_accept < len(nm) else MISSING
    ok = [bool(r) and r[0][0] == t and r[0][1] < threshold for r, t in zip(mated, truth, strict=True)]
    return 1 - float(np.mean(ok)), threshold


def det_curve(
    mated: list[list[tuple[str, float]]], truth: list[str], non_mated: list[list[tuple[str, float]]]
) -> tuple[np.ndarray, np.ndarray]:
    points = np.unique(np.concatenate([[r[0][1] for r in non_mated if r], [MISSING]]))
    fpir = np.array([np.mean([bool(r) and r[0][1] < t for r in non_mated]) for t in points])
    fnir = np.array(
        [
            1 - np.mean([bool(r) and r[0][0] == n and r[0][1] < t for r, n in zip(mated, truth, strict=True)])
            for t in points
        ]
    )
    return fpir, fnir


def plot(curves: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    far, tar = curves["roc"]
    axes[0].plot(np.maximum(far, 1e-4), tar)
    axes[0].set(
        xscale="log", xlabel="false accept rate", ylabel="true accept rate", title="LFW View 2 ROC (gRPC)"
    )
    cmc = curves["cmc"]
    axes[1].plot(np.arange(1, len(cmc) + 1), cmc, marker="o")
    axes[1].set(xlabel="rank", ylabel="identification rate", title="closed-set CMC (eval group)")
    for name, (fpir, fnir) in curves["det"].items():
        axes[2].plot(np.maximum(fpir, 1e-4), fnir, label=name)
    axes[2].set(xscale="log", yscale="log", xlabel="FPIR", ylabel="FNIR", title="open-set DET")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="", help="HOST:PORT of a running server (default: spawn one)")
    ap.add_argument("--api-key", default=os.environ.get("FACEID_API_KEY", ""), help="for --server")
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=0, help="N per fold, half same (0: all)")
    ap.add_argument(
        "--probes",
        type=int,
        default=0,
        help="first N probes of each kind, and only their identities enrolled (0: the protocol)",
    )
    ap.add_argument("--cache", type=Path, default=Path("results/lfw_embeddings.npz"))
    ap.add_argument("--lfw-limit", type=int, default=0, help="fit the distractors to the first N LFW images")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    lfw = faces_dir() / "lfw"
    tmp = tempfile.TemporaryDirectory(prefix="faceid-accuracy-")
    proc = None
    address = args.server
    if not address:
        from faceid.server.app import spawn

        proc, address, args.api_key = spawn(Path(tmp.name))
    print(
        f"accuracy: server {address}, distractors {args.distractors:,}, pairs/fold {args.pairs or 600}, "
        f"probes {args.probes or 'all'}"
    )
    print(f"machine: {machine()}")
    payload: dict[str, Any] = {"benchmark": "accuracy", "distractors": args.distractors}
    curves: dict[str, Any] = {"det": {}}
    try:
        with FaceIdClient(address, timeout=300, api_key=args.api_key) as client:
            payload["verification"], curves["roc"] = verification(client, lfw, args.pairs)
            groups = read_protocol(lfw)
            enrol, probes = groups["eval/enrol"], groups["eval/probe"]
            non_mated = singletons(lfw)
            if args.probes:  # a quick run: these probes, and only their identities enrolled
                probes, non_mated = probes[: args.probes], non_mated[: args.probes]
                wanted = {n for n, _ in probes}
                enrol = [e for e in enrol if e[0] in wanted]
            gallery = f"lfw-eval-{int(time.time())}"
            client.create_gallery(gallery)
            results = client.bulk_enroll(
                enroll_request(gallery, name, path.read_bytes()) for name, path in enrol
            )
            failed = Counter(r.error_code for r in results if r.error_code)
            print(
                f"enrolled {len(enrol) - sum(failed.values())} of {len(enrol)} eval identities {dict(failed)}"
            )
            pv, pf = embed_photos(client, [p for _, p in probes])
            nv, nf = embed_photos(client, [p for _, p in non_mated])
            truth = [n for n, _ in probes]
            mated_small = identify_all(client, gallery, pv, pf, 10)
            cmc = ranks(mated_small, truth, 10)
            curves["cmc"] = cmc
            payload["closed_set"] = {
                "probes": len(probes),
                "rank1": float(cmc[0]),
                "rank5": float(cmc[4]),
                "enrol_failures": dict(failed),
            }
            print(f"closed set: rank-1 {cmc[0]:.4f}, rank-5 {cmc[4]:.4f} ({len(probes)} probes)")
            non_small = identify_all(client, gallery, nv, nf, 1)
            open_set: dict[str, Any] = {"without_distractors": {}}
            for fpir in (1e-2, 1e-3):
                fnir, t = fnir_at_fpir(mated_small, truth, non_small, fpir)
                open_set["without_distractors"][f"fnir_at_fpir_{fpir:g}"] = {"fnir": fnir, "threshold": t}
            curves["det"]["no distractors"] = det_curve(mated_small, truth, non_small)
            if args.distractors:
                from faceid.benchmarks.synthetic import embed_lfw, fit

                real = embed_lfw(cache=args.cache, limit=args.lfw_limit)
                synth, _ = fit(real.vectors, real.labels).sample(-(-args.distractors // 4), 4, seed=7)
                requests = (
                    enroll_request(gallery, f"distractor-{i}", embedding=v.tolist())
                    for i, v in enumerate(synth[: args.distractors])
                )
                progress = Progress(args.distractors, "enrol distractors")
                for _ in client.bulk_enroll(requests):
                    progress.update()
                mated_big = identify_all(client, gallery, pv, pf, 1)
                non_big = identify_all(client, gallery, nv, nf, 1)
                open_set["with_distractors"] = {"rank1": float(ranks(mated_big, truth, 1)[0])}
                for fpir in (1e-2, 1e-3):
                    fnir, t = fnir_at_fpir(mated_big, truth, non_big, fpir)
                    open_set["with_distractors"][f"fnir_at_fpir_{fpir:g}"] = {"fnir": fnir, "threshold": t}
                curves["det"][f"{args.distractors:,} distractors"] = det_curve(mated_big, truth, non_big)
            open_set["without_distractors"]["rank1"] = float(cmc[0])
            payload["open_set"] = open_set
            for name, figures in open_set.items():
                print(
                    f"open set, {name.replace('_', ' ')}: "
                    + ", ".join(
                        f"{k} {v['fnir']:.4f} (threshold {v['threshold']:.3f})"
                        if isinstance(v, dict)
                        else f"{k} {v:.4f}"
                        for k, v in figures.items()
                    )
                )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        tmp.cleanup()
    payload["machine"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out / "accuracy.png")
    write_json(args.out / "accuracy.json", payload)
    return payload


if __name__ == "__main__":
    main()
