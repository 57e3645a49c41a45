"""Server settings: defaults, then a TOML file, then FACEID_* variables, then flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faceid.server.config import MIB, ServerConfig, settings


def test_each_source_overrides_the_one_before(tmp_path: Path) -> None:
    file = tmp_path / "faceid.toml"
    file.write_text('[server]\nport = 7000\nworkers = 2\ndata_dir = "/srv/faces"\n')
    env = {"FACEID_PORT": "7001", "FACEID_BATCH_WINDOW_MS": "2.5"}
    config = ServerConfig.load(file, env, port=7002)
    assert config.port == 7002
    engine = config.engine
    assert engine.workers == 2 and engine.data_dir == Path("/srv/faces") and engine.batch_window_ms == 2.5
    assert ServerConfig.load(None, {}).max_message_bytes == 32 * MIB


def test_unknown_or_bad_settings_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown server setting 'colour'"):
        ServerConfig.load(None, {}, colour="blue")
    with pytest.raises(ValueError, match="port"):
        ServerConfig.load(None, {"FACEID_PORT": "70000"})


def test_every_section_of_the_engine_is_reachable_from_file_environment_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "faceid.toml"
    file.write_text(
        "[server]\nworkers = 3\n[server.index]\ntrain_min = 1000\n[server.pipeline.detect]\nupsample = 2\n"
    )
    env = {"FACEID_INDEX__NPROBE_MIN": "24", "FACEID_PIPELINE__EMBED__FLIP": "no"}
    config = ServerConfig.load(file, env, **{"index.rerank_factor": "16", "max_top_k": 50})
    engine = config.engine
    assert (engine.workers, engine.index.train_min, engine.pipeline.detect.upsample) == (3, 1000, 2)
    assert engine.index.nprobe_min == 24 and engine.pipeline.embed.flip is False
    assert engine.index.rerank_factor == 16 and engine.max_top_k == 50
    assert engine.pipeline.detect.min_face_size == 20  # what no source set keeps its default
    assert config.engine_for(first=False).snapshots is False


def test_every_setting_has_one_name_and_none_is_a_role_the_server_sets() -> None:
    names = settings()
    assert {"port", "data_dir", "workers", "index.nprobe_min", "pipeline.detect.upsample"} <= names.keys()
    assert "shared" not in names and "snapshots" not in names  # set from --processes, not by hand


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("index.nprobe_min", "0", "index settings: nprobe_min must be positive"),
        ("pipeline.detect.upsample", "9", "pipeline.detect settings: upsample must be between 0 and 3"),
        ("workers", "0", "workers must be positive"),
        ("max_top_k", "5000", "max_top_k .* must not exceed index.max_k"),
        ("pipeline.embed.flip", "maybe", "setting pipeline.embed.flip: expected bool"),
        ("index.train_min", "many", "setting index.train_min: expected int"),
        ("index.colour", "blue", "unknown server setting 'index.colour'"),
    ],
)
def test_a_bad_value_anywhere_in_the_tree_fails_at_start_naming_it(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig.load(None, {}, **{name: value})


def test_serve_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceid.client.cli",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--set",
            "index.nprobe_min=0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "faceid serve: index settings: nprobe_min must be positive; got 0"
    ]
