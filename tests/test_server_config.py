"""Server settings: defaults, then a TOML file, then FACEID_* variables, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceid.server.config import MIB, ServerConfig


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
