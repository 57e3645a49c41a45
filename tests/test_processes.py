"""``faceid serve --processes N``: several server processes on one port and one store."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faceid.client.client import FaceIdClient
from faceid.server.app import Spawned, spawn

from .helpers import unit_values as unit

CONNECTIONS = 16  # dealt out by the kernel: all on one process has odds of 2 in 65,536


def children(pid: int) -> list[int]:
    """The server processes the supervisor ``pid`` started (not multiprocessing's helper)."""
    pids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in pids if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def connections_to(port: int) -> set[str]:
    """Inodes of the established TCP sockets whose local port is ``port`` (the server's ends)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                out.add(fields[9])
    return out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Spawned]:
    s = spawn(tmp_path, "--processes", "2")
    yield s
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(60)


@pytest.fixture
def client(server: Spawned) -> Iterator[FaceIdClient]:
    with FaceIdClient(server.address, api_key=server.admin_key, connections=CONNECTIONS) as c:
        yield c


def test_the_processes_share_the_connections_and_each_answers_with_the_others_writes(
    server: Spawned, client: FaceIdClient
) -> None:
    client.create_gallery("g")
    for i in range(CONNECTIONS):  # the client takes turns: each connection enrols one identity
        client.enroll("g", f"p{i}", embedding=unit(i))
    port = int(server.address.rsplit(":", 1)[1])
    held = [len(socket_inodes(child) & connections_to(port)) for child in children(server.proc.pid)]
    assert len(held) == 2 and min(held) >= 1 and sum(held) == CONNECTIONS
    for i in range(CONNECTIONS):
        for _ in range(CONNECTIONS):  # identity i looked up on every connection in turn
            [face] = client.identify("g", embedding=unit(i), top_k=1)
            assert face.matches[0].identity_id == f"p{i}"
    client.delete_identity("g", "p3")
    for _ in range(CONNECTIONS):
        [face] = client.identify("g", embedding=unit(3), top_k=1)
        assert face.matches[0].identity_id != "p3"


def test_sigterm_stops_every_process_and_the_first_writes_the_snapshot(
    server: Spawned, client: FaceIdClient, tmp_path: Path
) -> None:
    client.create_gallery("g")
    for i in range(4):
        client.enroll("g", f"p{i}", embedding=unit(i))
    workers = children(server.proc.pid)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert [p.suffix for p in (tmp_path / "index").iterdir()] == [".faceidx"]  # the server's data dir


def test_when_one_process_dies_the_others_stop_and_the_status_says_so(server: Spawned) -> None:
    first, second = children(server.proc.pid)
    os.kill(second, signal.SIGKILL)
    assert server.proc.wait(60) == 1
    deadline = time.time() + 30
    while Path(f"/proc/{first}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{first}").exists()
