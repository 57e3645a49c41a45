"""Small versions of the benchmarks, so that they keep working; figures are not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from faceid.benchmarks import embed_throughput, lfw_verification


def test_lfw_verification_runs_the_protocol_and_writes_json_and_roc(faces: Path, tmp_path: Path) -> None:
    payload = lfw_verification.main(["--pairs", "3", "--out", str(tmp_path)])
    assert payload["pairs"] == 30
    assert set(payload["variants"]) == {
        "faceid",
        "faceid+flip",
        "faceid+norm",
        "faceid+flip+norm",
        "faceid+2crops",
        "dlib",
    }
    assert (tmp_path / "lfw_roc.png").stat().st_size > 0
    saved = json.loads((tmp_path / "lfw_verification.json").read_text())
    assert 0.0 <= saved["variants"]["faceid"]["accuracy_mean"] <= 1.0


def test_embed_throughput_measures_every_batch_size_and_dlib(tmp_path: Path) -> None:
    payload = embed_throughput.main(["--batches", "1,4", "--seconds", "0.2", "--out", str(tmp_path)])
    rows = [r for r in payload["faceid"] if r["precision"] == "fp32"]
    assert {(r["batch"], r["flip"]) for r in rows} == {(1, False), (4, False), (1, True), (4, True)}
    assert payload["dlib_faces_per_s"] > 0
    assert len(payload["detector"]) == 4
    assert (tmp_path / "embed_throughput.json").is_file()
