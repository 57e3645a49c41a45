"""Generate the Python protobuf and gRPC code from ``proto/faceid/v1/faceid.proto``.

    python -m faceid.proto.generate          # rewrite the committed files
    python -m faceid.proto.generate --check  # exit 1 when they differ from a fresh build

grpcio-tools writes ``from faceid.v1 import faceid_pb2`` into the gRPC module;
the files live in the package ``faceid.proto.faceid.v1``, so that import is made
relative.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTO = "faceid/v1/faceid.proto"
GENERATED = ("faceid_pb2.py", "faceid_pb2.pyi", "faceid_pb2_grpc.py")


def generate(out: Path) -> dict[str, str]:
    """Run protoc into ``out``; returns the generated files' texts by name."""
    from grpc_tools import protoc

    outputs = [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args = ["protoc", f"-I{ROOT}", *outputs, PROTO]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    texts = {}
    for name in GENERATED:
        text = (out / "faceid" / "v1" / name).read_text()
        text = re.sub(r"^from faceid\.v1 import faceid_pb2", "from . import faceid_pb2", text, flags=re.M)
        texts[name] = text
    return texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        texts = generate(Path(tmp))
    target = ROOT / "faceid" / "v1"
    stale = [n for n, t in texts.items() if not (target / n).is_file() or (target / n).read_text() != t]
    if args.check:
        for name in stale:
            print(
                f"{target / name} does not match {PROTO}: run python -m faceid.proto.generate",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for name, text in texts.items():
        (target / name).write_text(text)
    print(f"wrote {', '.join(texts)} in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
