"""``faceid serve --processes N``: several server processes on one port and one store."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from faceid.client.client import call_metadata, channel_options, enroll_request, identify_request
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc
from faceid.server.app import Spawned, spawn

from .test_grpc import unit

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
def stubs(server: Spawned) -> Iterator[list[pb_grpc.FaceIdStub]]:
    options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]  # a connection each
    channels = [grpc.insecure_channel(server.address, options) for _ in range(CONNECTIONS)]
    yield [pb_grpc.FaceIdStub(c) for c in channels]  # type: ignore[no-untyped-call]
    for c in channels:
        c.close()


def test_the_processes_share_the_connections_and_each_answers_with_the_others_writes(
    server: Spawned, stubs: list[pb_grpc.FaceIdStub]
) -> None:
    md = call_metadata(server.admin_key, ())
    stubs[0].CreateGallery(pb.CreateGalleryRequest(gallery_id="g"), metadata=md)
    for i, stub in enumerate(stubs):  # each connection enrols one identity
        stub.Enroll(enroll_request("g", f"p{i}", embedding=unit(i)), metadata=md)
    port = int(server.address.rsplit(":", 1)[1])
    held = [len(socket_inodes(child) & connections_to(port)) for child in children(server.proc.pid)]
    assert len(held) == 2 and min(held) >= 1 and sum(held) == CONNECTIONS
    for i in range(CONNECTIONS):
        for stub in stubs:
            found = stub.Identify(identify_request("g", embedding=unit(i), top_k=1), metadata=md)
            assert found.faces[0].matches[0].identity_id == f"p{i}"
    stubs[3].DeleteIdentity(pb.DeleteIdentityRequest(name="galleries/g/identities/p3"), metadata=md)
    for stub in stubs:
        found = stub.Identify(identify_request("g", embedding=unit(3), top_k=1), metadata=md)
        assert found.faces[0].matches[0].identity_id != "p3"


def test_sigterm_stops_every_process_and_the_first_writes_the_snapshot(
    server: Spawned, stubs: list[pb_grpc.FaceIdStub], tmp_path: Path
) -> None:
    md = call_metadata(server.admin_key, ())
    stubs[0].CreateGallery(pb.CreateGalleryRequest(gallery_id="g"), metadata=md)
    stubs[1].Enroll(enroll_request("g", "ann", embedding=unit(1)), metadata=md)
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
