"""Small versions of the benchmarks, so that they keep working; figures are not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faceid.benchmarks import (
    detector_verification,
    embed_throughput,
    identify_batch,
    lfw_verification,
    photo_throughput,
    startup,
)


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


def test_synthetic_index_scale_and_calibration_run_on_a_slice_of_lfw(faces: Path, tmp_path: Path) -> None:
    from faceid.benchmarks import calibrate, index_scale, synthetic

    common = ["--lfw-limit", "400", "--cache", str(tmp_path / "lfw.npz"), "--out", str(tmp_path)]
    synth = synthetic.main([*common, "--identities", "200"])
    assert len(synth["real"]["same"]) == 7 and len(synth["synthetic"]["different"]) == 7
    scale = index_scale.main(
        [
            *common,
            "--n",
            "3000",
            "--nprobes",
            "4,16",
            "--reranks",
            "2",
            "--single",
            "5",
            "--variants",
            "IVF{nlist},PQ{pq_m}x4fs;pq_m=16",
        ]
    )
    assert scale["gallery_size"] > 3000 and len(scale["variants"][0]["points"]) == 2
    assert (tmp_path / "index_scale_3000.png").stat().st_size > 0
    table = calibrate.main([*common, "--fmr", "1e-2"])["table"]
    assert 0 < table[0]["threshold"] < 2


def test_enrolment_benchmark_runs_on_both_databases(tmp_path: Path) -> None:
    from faceid.benchmarks import enroll_throughput

    from .helpers import postgres_unavailable

    databases = "sqlite" if postgres_unavailable() else "sqlite,postgresql"
    payload = enroll_throughput.main(
        ["--n", "2000", "--batch", "500", "--databases", databases, "--out", str(tmp_path)]
    )
    assert [r["database"] for r in payload["results"]] == databases.split(",")


def test_load_generator_drives_a_spawned_server_and_the_ceiling(tmp_path: Path) -> None:
    from faceid.benchmarks import load

    payload = load.main(
        [
            "--spawn",
            "--gallery-size",
            "300",
            "--workload",
            "identify-embedding,mix,identify-batch-embedding",
            "--batch-size",
            "8",
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--ceiling",
            "--out",
            str(tmp_path),
            "--name",
            "smoke",
        ]
    )
    assert len(payload["results"]) == 4
    assert all(r["requests"] > 0 for r in payload["results"])
    batch = next(r for r in payload["results"] if r["workload"] == "identify-batch-embedding")
    assert batch["probes_per_call"] == 8 and batch["probe_codes"] == {"OK": 8 * batch["codes"]["OK"]}
    assert batch["lookups_per_s"] == pytest.approx(8 * batch["ok_per_s"])
    assert (tmp_path / "smoke.png").stat().st_size > 0


def test_photo_batch_compares_identify_batch_with_the_engine_in_process_on_the_same_photos(
    faces: Path, tmp_path: Path
) -> None:
    from faceid.benchmarks import photo_batch

    payload = photo_batch.main(
        ["--limit", "6", "--rounds", "1", "--batch", "3", "--out", str(tmp_path), "--name", "smoke"]
    )
    assert payload["photos"] == 6
    assert payload["same_best_identity"] == 6
    assert payload["in_process_photos_per_s"] > 0 and payload["identify_batch_photos_per_s"] > 0


def test_settings_ab_restarts_the_server_on_one_gallery_for_each_value(tmp_path: Path) -> None:
    from faceid.benchmarks import settings_ab

    args = ["--gallery-size", "200", "--setting", "FACEID_BATCH_INFLIGHT=1,2", "--rounds", "1"]
    payload = settings_ab.main([*args, "--duration", "0.5", "--warmup", "0.1", "--out", str(tmp_path)])
    assert [r["value"] for r in payload["runs"]] == ["1", "2"]
    assert all(r["requests"] > 0 and r["codes"] == {"OK": r["requests"]} for r in payload["runs"])
    assert (tmp_path / "settings_ab_faceid_batch_inflight.json").is_file()


def test_accuracy_through_the_grpc_api_runs_every_protocol(faces: Path, tmp_path: Path) -> None:
    from faceid.benchmarks import accuracy

    args = ["--pairs", "2", "--probes", "15", "--distractors", "300", "--lfw-limit", "300"]
    payload = accuracy.main([*args, "--out", str(tmp_path), "--cache", str(tmp_path / "lfw.npz")])
    assert payload["verification"]["pairs"] == 20
    assert 0 <= payload["closed_set"]["rank1"] <= payload["closed_set"]["rank5"] <= 1
    assert "fnir_at_fpir_0.01" in payload["open_set"]["with_distractors"]
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_soak_samples_memory_and_latency_over_time(tmp_path: Path) -> None:
    from faceid.benchmarks import soak

    args = ["--duration", "6", "--warmup", "2", "--interval", "1", "--gallery-size", "300"]
    args += ["--concurrency", "2", "--enroll-ratio", "0.2", "--photo-ratio", "0"]
    payload = soak.main([*args, "--out", str(tmp_path), "--name", "smoke"])
    summary = payload["summary"]
    assert summary["calls"] > 0 and set(summary["codes"]) == {"OK"}
    assert len(payload["timeline"]) >= 5 and summary["rss_after_warmup_mib"] > 0
    assert (tmp_path / "smoke.png").exists() and (tmp_path / "smoke.json").exists()


def test_a_subset_of_pairs_holds_as_many_same_as_different_pairs_in_each_fold(faces: Path) -> None:
    """The pair files list a fold's same pairs first: a subset must not be all same pairs."""
    from faceid.benchmarks.common import first_pairs, read_pairs

    for name in ("lfw/pairs.csv", "cfp_dev/pairs_FP.csv"):
        pairs = first_pairs(read_pairs(faces / name), 10)
        for fold in {p.fold for p in pairs}:
            in_fold = [p for p in pairs if p.fold == fold]
            assert len(in_fold) == 10 and sum(p.same for p in in_fold) == 5


def test_detector_verification_scores_each_mode_and_face_rule_and_plots_them(
    faces: Path, tmp_path: Path
) -> None:
    detector_verification.main(
        [
            "--sets",
            "cfp_dev/pairs_FF.csv",
            "--modes",
            "hog:0:1,cnn:0:0",
            "--limit",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "detector_verification.json").read_text())
    assert set(saved["results"]) == {"hog:0:1", "cnn:0:0"}
    for mode in saved["results"].values():
        assert set(mode["rules"]) == {"centre", "largest"}
        assert mode["rules"]["centre"]["cfp_dev/pairs_FF.csv"]["pairs"] == 10
    assert (tmp_path / "detector_verification.png").stat().st_size > 0


def test_photo_throughput_measures_embed_identify_and_the_detector_per_mode(
    faces: Path, tmp_path: Path
) -> None:
    photo_throughput.main(
        [
            "--modes",
            "cnn:0:1",
            "--sizes",
            "320x240",
            "--rounds",
            "1",
            "--callers",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "photo_throughput.json").read_text())
    r = saved["results"]["cnn:0:1"]["320x240"]
    assert r["embed"]["photos"] == r["identify"]["photos"] > 50
    assert r["identify"]["photos_per_second"] > 0 and r["detector_alone_ms"] > 0


def test_identify_batch_compares_the_call_with_the_index_in_process(tmp_path: Path) -> None:
    result = identify_batch.main(
        [
            "--n",
            "3000",
            "--queries",
            "256",
            "--batches",
            "128",
            "--single-seconds",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert result["recall_at_1"][128] >= 0.99 and result["same_top_as_identify"] == 1.0
    assert result["grpc_qps"][128] > 0 and result["in_process_qps"][128] > 0
    assert (tmp_path / "identify_batch.json").is_file()


def test_the_clustering_benchmark_scores_every_method_on_lfw_and_runs_at_scale_in_process_and_through_the_api(
    faces: Path, tmp_path: Path
) -> None:
    from faceid.benchmarks import clustering

    payload = clustering.main(
        ["--lfw", "--limit", "300", "--scale", "3000", "--gallery", "2000", "--out", str(tmp_path)]
    )
    lfw = payload["lfw"]
    assert lfw["photos"] == 300 and lfw["api"]["clusters"] > 0
    assert {
        "connected components",
        "chinese whispers",
        "average linkage",
        "size-aware average linkage",
    } <= set(lfw["methods"])
    assert payload["scale"]["faces"] == 3000 and payload["gallery"]["faces"] == 2000
    assert 0 < payload["gallery"]["bcubed_f"] <= 1
    assert (tmp_path / "clustering_lfw.png").stat().st_size > 0
    # the scores themselves: a perfect clustering scores 1, everything in one cluster has precision 1/n
    truth = ["a", "a", "b", "b"]
    assert clustering.pairwise(truth, np.array([0, 0, 1, 1])) == (1.0, 1.0, 1.0)
    assert clustering.bcubed(truth, np.array([0, 0, 0, 0]))[:2] == (0.5, 1.0)


def test_the_startup_benchmark_builds_a_gallery_restarts_it_and_times_serving(tmp_path: Path) -> None:
    args = ["--gallery-size", "3000", "--data-dir", str(tmp_path / "data"), "--rounds", "1"]
    payload = startup.main([*args, "--vectors", "uniform", "--batch", "1000", "--out", str(tmp_path / "out")])
    [round_] = payload["results"]
    assert payload["build"]["faces_per_s"] > 0 and payload["snapshot_bytes"] > 0
    assert 0 < round_["port_s"] <= round_["serving_s"] and round_["identify_ok_s"] > 0  # (polled apart)
    assert payload["empty"]["serving_s"] > 0
    assert (tmp_path / "out" / "startup_3000.json").exists()
