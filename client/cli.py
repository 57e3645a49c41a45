"""The ``faceid`` command.

``faceid faces PHOTO…`` runs the face pipeline in this process and prints every
face found: box, detection score, five landmarks and the embedding's norm (or
the whole embedding with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from faceid.engine.config import PipelineConfig
from faceid.engine.errors import FaceIdError
from faceid.engine.pipeline import Face, FacePipeline


def _face_record(face: Face, with_embedding: bool) -> dict[str, Any]:
    b = face.box
    record: dict[str, Any] = {
        "box": {"left": b.left, "top": b.top, "right": b.right, "bottom": b.bottom},
        "score": face.detection.score,
        "landmarks": face.detection.landmarks.tolist(),
    }
    if with_embedding:
        record["embedding"] = face.embedding.tolist()
    return record


def cmd_faces(args: argparse.Namespace) -> int:
    config = PipelineConfig()
    config = replace(config, detect=replace(config.detect, upsample=args.upsample))
    pipeline = FacePipeline(config)
    status = 0
    results = []
    for path in args.photos:
        try:
            faces = pipeline.process(Path(path).read_bytes())
        except (FaceIdError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            results.append({"photo": str(path), "faces": [_face_record(f, True) for f in faces]})
            continue
        print(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
        for i, f in enumerate(faces):
            b = f.box
            print(
                f"  face {i}: box ({b.left:.0f}, {b.top:.0f})–({b.right:.0f}, {b.bottom:.0f}) "
                f"score {f.detection.score:.2f}, embedding norm {float((f.embedding**2).sum()) ** 0.5:.3f}"
            )
    if args.json:
        json.dump(results, sys.stdout)
        print()
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceid", description="faceid face identification engine")
    sub = parser.add_subparsers(dest="command", required=True)
    faces = sub.add_parser("faces", help="detect, align and embed the faces in photos (in this process)")
    faces.add_argument("photos", nargs="+", type=Path, help="photo files (JPEG, PNG, WEBP, GIF, BMP, TIFF)")
    faces.add_argument(
        "--upsample", type=int, default=1, help="detector upsampling (0-3; 1 finds ~40 px faces)"
    )
    faces.add_argument("--json", action="store_true", help="print JSON with the embeddings")
    faces.set_defaults(func=cmd_faces)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
