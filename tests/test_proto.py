"""The committed generated code is exactly what grpcio-tools makes of the .proto."""

from __future__ import annotations

from faceid.proto import generate


def test_generated_code_matches_the_proto() -> None:
    assert generate.main(["--check"]) == 0, "run: python -m faceid.proto.generate"
