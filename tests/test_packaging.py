"""Packaging: the Python client and the command line work with none of the engine's packages.

A real server runs as usual; the client runs in a Python process where torch, dlib, Pillow, faiss,
SQLAlchemy and Alembic cannot be imported (as after ``pip install faceid`` without the ``cpu``
extra).  The wheel check (``.ci/wheel_check``) adds that the wheel's metadata asks for none of
them outside the ``server`` extra.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from faceid.client.cli import SERVER_PACKAGES
from faceid.server.app import spawn

#: Makes the engine's packages unimportable, then runs the rest of the script.
BLOCK = f"""
import importlib.abc, sys
BLOCKED = {sorted(SERVER_PACKAGES)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""

CLIENT = """
import json, sys
from faceid.client.client import FaceIdClient
from faceid.client import cli
address, key = sys.argv[1], sys.argv[2]
vector = [1.0] + [0.0] * 127
with FaceIdClient(address, api_key=key) as c:
    c.create_gallery("client-only")
    [face] = c.enroll("client-only", "alice", embedding=vector)
    [result] = c.identify("client-only", embedding=vector, top_k=1)
status = cli.main(["--server", address, "--api-key", key, "--json", "galleries", "list"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
match = result.matches[0].identity_id
print(json.dumps({"face": face.face_id, "match": match, "status": status, "loaded": loaded}))
"""


def run_blocked(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + script, *args], capture_output=True, text=True, timeout=120
    )


def test_the_client_and_its_command_line_need_none_of_the_engines_packages(tmp_path: Path) -> None:
    server = spawn(tmp_path / "data")
    try:
        done = run_blocked(CLIENT, server.address, server.admin_key)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        outcome = json.loads(lines[-1])
        assert outcome["match"] == "alice" and outcome["face"] > 0 and outcome["status"] == 0
        assert outcome["loaded"] == []
        assert "client-only" in "".join(lines[:-1])  # `faceid --json galleries list` printed it
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)


def test_serving_without_the_engines_packages_says_what_to_install() -> None:
    done = run_blocked("from faceid.client import cli; raise SystemExit(cli.main(['serve', '--port', '0']))")
    assert done.returncode == 2
    assert "pip install 'faceid[cpu]'" in done.stderr and "Traceback" not in done.stderr
