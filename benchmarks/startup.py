"""Start-up time to SERVING: ``faceid serve`` restarted on a gallery of N faces, timed from the
moment its process starts.

    python -m faceid.benchmarks.startup --gallery-size 1000000 --data-dir /work/scratch/startup-1m \\
        [--rounds 3] [--cold] [--out benchmarks/results]

**The gallery.** When ``--data-dir`` holds no finished gallery of ``--gallery-size`` faces (its
marker file, ``startup-benchmark.json``, says so), a server is spawned on it and the gallery is
built through the API as the load generator builds its own (``load.fill_gallery``: EnrollBatch of
5,000 faces from the generator fitted to real embeddings, each face its own identity), a line every
2 %; a build cut short resumes from the gallery's face count.  The server is then stopped by
SIGTERM, which writes the index snapshot.  Keep the data directory outside the repository.

**The rounds** (``--rounds``): the server is started on a port picked here (``--port``; the
"listening on" line is not waited for) and polled every ``--poll`` seconds from the moment the
process starts:

* *port*: the first health Check the server answers at all (a TCP connect first; refused = not up);
* *NOT_SERVING*: the first Check of "" or "faceid.v1.FaceId" answering NOT_SERVING (loading);
* *SERVING*: both services answer SERVING;
* *Identify OK*: the first Identify by embedding (a person not in the gallery) answering OK,
  tried every 5 polls until SERVING, every poll after.

Each round also records the first time each health answer was seen per service, the codes
Identify got before OK, when "listening on" was printed, the server's peak RSS (VmHWM) at
Identify OK and at exit, the time from SIGTERM to exit (it drains and writes the snapshot) and
what health said meanwhile, and the server's log lines (``--log-level INFO``), timestamped here
as they arrive on its stderr (also appended to ``DATA_DIR/server.log``): where the log names a
step, the gap before its line is that step's time.  ``--cold`` evicts the data directory's files
from the page cache before each start (``posix_fadvise``; the libraries stay cached).

**Baselines**: ``python -c "import faceid.engine.service"`` (Python, torch, faiss, …) and a server
start on an empty data directory, the same way.

Prints its parameters, a table and the medians; writes ``startup_<N>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceid.benchmarks.common import machine, write_json
from faceid.benchmarks.load import GALLERY, face_vectors, fill_gallery
from faceid.client.client import call_metadata, channel_options, identify_request
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc

pb_grpc = cast(Any, faceid_pb2_grpc)  # generated, untyped
SERVICE = pb.DESCRIPTOR.services_by_name["FaceId"].full_name
HEALTH_SERVICES = ("", SERVICE)
MARKER = "startup-benchmark.json"
MIB = 2**20
#: Poll channels: reconnect at once (gRPC's default backoff, 1 s and growing, would blur the timing).
POLL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
    ("grpc.enable_retries", 0),
    ("grpc.use_local_subchannel_pool", 1),
]
#: Answers that mean nobody answered (not up yet, or gone).
NO_ANSWER = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
REPLAYED = re.compile(r"gallery (\S+): loaded snapshot at change (\d+), replayed (\d+) changes")


# ---- the data directory ---------------------------------------------------------------------------
def read_marker(data_dir: Path) -> dict[str, Any]:
    path = data_dir / MARKER
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def write_marker(data_dir: Path, marker: dict[str, Any]) -> None:
    """The build's state, and the admin key the server printed on its first start (benchmark data)."""
    (data_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def snapshot_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "index").glob("*.faceidx"))


def evict(data_dir: Path) -> int:
    """Drop the data directory's files from the page cache (their clean pages); the bytes asked."""
    total = 0
    for path in data_dir.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += path.stat().st_size
            finally:
                os.close(fd)
    return total


def proc_status(pid: int) -> dict[str, float]:
    """VmHWM (peak) and VmRSS of a process, MiB; empty once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
    return out


# ---- building the gallery ---------------------------------------------------------------------------
def face_count(address: str, api_key: str) -> int:
    """The benchmark gallery's faces (0 when it does not exist)."""
    channel = grpc.insecure_channel(address, channel_options())
    try:
        stub = pb_grpc.FaceIdStub(channel)
        request = pb.GetGalleryRequest(name=f"galleries/{GALLERY}")
        return int(stub.GetGallery(request, metadata=call_metadata(api_key, ()), timeout=600).face_count)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise
    finally:
        channel.close()


def wait_serving(address: str, timeout: float = 3600.0) -> float:
    """Wait until health checking says SERVING for the FaceId service; the seconds waited."""
    t0 = time.perf_counter()
    with grpc.insecure_channel(address, POLL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while health_state(stub, SERVICE) != "SERVING":
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{address} was not SERVING after {timeout:.0f} s")
            time.sleep(0.1)
    return time.perf_counter() - t0


def build_gallery(data_dir: Path, n: int, env: dict[str, str], batch: int, vectors: str) -> dict[str, Any]:
    """Fill ``data_dir`` with a gallery of ``n`` faces through a spawned server (resuming a build
    cut short), stop it with SIGTERM; the build's figures (also kept in the marker file)."""
    from faceid.server.app import spawn  # here: only a build needs the engine in this process

    marker = read_marker(data_dir)
    if marker.get("complete") and marker.get("faces") == n:
        print(f"data dir {data_dir}: gallery of {n:,} faces already built")
        return dict(marker.get("build", {}))
    print(f"data dir {data_dir}: building a gallery of {n:,} faces through the API")
    server = spawn(data_dir, env=env)
    marker = {**marker, "gallery": GALLERY, "faces": n, "complete": False}
    marker["admin_key"] = server.admin_key or marker.get("admin_key", "")
    write_marker(data_dir, marker)
    key = marker["admin_key"]
    out: dict[str, Any] = {"env": env, "batch": batch, "vectors": vectors}
    try:
        wait_serving(server.address)
        done = out["resumed_from"] = face_count(server.address, key)
        if done > n:
            raise SystemExit(f"{data_dir} holds {done:,} faces, more than --gallery-size {n:,}")
        step = max(batch, n // 50 // batch * batch)  # a line every 2 %
        start = time.perf_counter()
        while done < n:
            m = min(step, n - done)
            fill_gallery(server.address, m, key, vectors, batch=batch, first=done)
            done += m
            _progress_line(done, n, out["resumed_from"], time.perf_counter() - start, server.proc.pid)
        out["enrol_seconds"] = time.perf_counter() - start
        out["server_peak_rss_mib"] = proc_status(server.proc.pid).get("VmHWM", float("nan"))
    finally:
        t0 = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(3600)
        out["stop_seconds"] = time.perf_counter() - t0
    out["faces_per_s"] = (n - out["resumed_from"]) / max(out["enrol_seconds"], 1e-9)
    out["data_dir_bytes"] = tree_bytes(data_dir)
    out["snapshot_bytes"] = snapshot_bytes(data_dir)
    print(
        f"built: {n - out['resumed_from']:,} faces in {out['enrol_seconds']:.0f} s "
        f"({out['faces_per_s']:,.0f} faces/s, index training waited for), server peak RSS "
        f"{out['server_peak_rss_mib']:,.0f} MiB; SIGTERM to exit {out['stop_seconds']:.1f} s; "
        f"data dir {out['data_dir_bytes'] / 2**30:.2f} GiB, snapshot {out['snapshot_bytes'] / 2**30:.2f} GiB"
    )
    write_marker(data_dir, {**marker, "complete": True, "build": out})
    return out


def _progress_line(done: int, n: int, first: int, seconds: float, pid: int) -> None:
    rate = (done - first) / max(seconds, 1e-9)
    rss = proc_status(pid).get("VmRSS", float("nan"))
    print(
        f"build: {done:,}/{n:,} faces ({done / n:.0%}) in {seconds:.0f} s, {rate:,.0f} faces/s, "
        f"~{(n - done) / max(rate, 1e-9):.0f} s left; server RSS {rss:,.0f} MiB",
        flush=True,
    )


# ---- one start ---------------------------------------------------------------------------------------
def free_port() -> int:
    """A port nobody listens on now (the kernel's pick for port 0; closed again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Lines(threading.Thread):
    """Reads a child's pipe to its end: each line with its arrival time (``clock``), and copied
    to ``copy`` when given."""

    def __init__(self, pipe: IO[str], clock: Callable[[], float], copy: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.pipe, self.clock, self.copy = pipe, clock, copy
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        sink = self.copy.open("a") if self.copy else None
        try:
            for line in self.pipe:
                self.lines.append((self.clock(), line.rstrip("\n")))
                if sink:
                    sink.write(line)
                    sink.flush()
        finally:
            if sink:
                sink.close()


class Seen:
    """The first time (seconds since the start) each event was seen."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.first: dict[str, float] = {}
        self.lock = threading.Lock()
        #: Health Checks made while starting: how many, the slowest (s), how many timed out (1 s).
        self.checks, self.check_max, self.timeouts = 0, 0.0, 0

    def __call__(self, event: str) -> None:
        t = self.clock()
        with self.lock:
            self.first.setdefault(event, t)

    def latency(self, seconds: float, answer: str) -> None:
        """A health Check's time to answer (a timeout counts its 1 s deadline)."""
        self.check_max = max(self.check_max, seconds)
        self.checks += 1
        self.timeouts += answer == "DEADLINE_EXCEEDED"

    def __contains__(self, event: str) -> bool:
        return event in self.first


def health_state(stub: Any, service: str) -> str:
    """SERVING, NOT_SERVING, …, or the status code of a Check that failed (NOT_FOUND: not set)."""
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def poll_identify(
    port: int, api_key: str, seen: Seen, serving: threading.Event, done: threading.Event, poll: float
) -> None:
    """Identify by embedding until one answers OK (every 5 polls before SERVING, every poll after);
    each code's first time goes to ``seen`` as ``identify <CODE>``."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", [*channel_options(retries=False), *POLL_OPTIONS])
    stub = pb_grpc.FaceIdStub(channel)
    request = identify_request(GALLERY, embedding=face_vectors(1, 10**9)[0].tolist(), top_k=10)
    md = call_metadata(api_key, ())
    try:
        while not done.is_set():
            try:
                stub.Identify(request, metadata=md, timeout=10.0)
            except grpc.RpcError as exc:
                seen(f"identify {exc.code().name}")
            else:
                seen("identify OK")
                return
            if serving.is_set():
                done.wait(poll)
            else:
                serving.wait(5 * poll)
    finally:
        channel.close()


def watch_start(
    proc: subprocess.Popen[str], port: int, seen: Seen, timeout: float, poll: float
) -> grpc.Channel:
    """Poll the port and the health service until both services answer SERVING; returns the
    health channel (open)."""
    channel: grpc.Channel | None = None
    stub: Any = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} while starting")
        if seen.clock() > timeout:
            raise TimeoutError(f"the server was not SERVING after {timeout:.0f} s")
        if channel is None and tcp_accepts(port):
            seen("tcp")
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", POLL_OPTIONS)
            stub = health_pb2_grpc.HealthStub(channel)
        if stub is not None:
            states = {}
            for service in HEALTH_SERVICES:
                t = time.perf_counter()
                states[service] = health_state(stub, service)
                seen.latency(time.perf_counter() - t, states[service])
            for service, state in states.items():
                seen(f"health {service or '(all)'} {state}")
            if any(s not in NO_ANSWER for s in states.values()):
                seen("port")
            if "NOT_SERVING" in states.values():
                seen("not_serving")
            if all(s == "SERVING" for s in states.values()):
                seen("serving")
                assert channel is not None
                return channel
        time.sleep(poll)


def stop_server(proc: subprocess.Popen[str], channel: grpc.Channel, poll: float) -> dict[str, Any]:
    """SIGTERM, then health polled until the process exits: seconds to exit, to the first
    NOT_SERVING and to the first unanswered Check after the signal, and the last VmHWM read."""
    stub = health_pb2_grpc.HealthStub(channel)
    t0 = time.perf_counter()
    seen = Seen(lambda: time.perf_counter() - t0)
    peak = float("nan")
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None:
        peak = proc_status(proc.pid).get("VmHWM", peak)
        if "gone" not in seen:
            state = health_state(stub, SERVICE)
            seen(state if state not in NO_ANSWER else "gone")
        time.sleep(poll)
    exit_s = time.perf_counter() - t0
    channel.close()
    return {
        "sigterm_to_exit_s": exit_s,
        "drain_not_serving_s": seen.first.get("NOT_SERVING"),
        "drain_unanswered_s": seen.first.get("gone"),
        "drain_answers": seen.first,
        "peak_rss_mib": peak,
        "exit_status": proc.returncode,
    }


def serve_command(data_dir: Path, port: int, flags: Iterable[str]) -> list[str]:
    """``faceid serve`` as :func:`faceid.server.app.spawn` runs it, on ``port``, logging INFO."""
    return [
        sys.executable,
        "-m",
        "faceid.client.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "INFO",
        *flags,
    ]


def start_once(
    data_dir: Path,
    env: dict[str, str],
    api_key: str,
    identify: bool,
    poll: float = 0.02,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Start the server, time it to SERVING and a first Identify OK, stop it; the round's figures."""
    port = free_port()
    t0 = time.perf_counter()
    clock: Callable[[], float] = lambda: time.perf_counter() - t0  # noqa: E731
    proc = subprocess.Popen(
        serve_command(data_dir, port, []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = Lines(proc.stderr, clock, data_dir / "server.log")
    stdout = Lines(proc.stdout, clock)
    stderr.start()
    stdout.start()
    seen = Seen(clock)
    serving, done = threading.Event(), threading.Event()
    prober = threading.Thread(target=poll_identify, args=(port, api_key, seen, serving, done, poll))
    out: dict[str, Any] = {"port": port, "load_average": os.getloadavg()}
    try:
        if identify:
            prober.start()
        channel = watch_start(proc, port, seen, timeout, poll)
        serving.set()
        if identify:
            prober.join(timeout)
        out["rss_at_ready_mib"] = proc_status(proc.pid)
        out["faces"] = face_count(f"127.0.0.1:{port}", api_key) if identify else 0
        out.update(stop_server(proc, channel, poll))
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(600)
        stderr.join(30)
        stdout.join(30)
        if prober.is_alive():
            prober.join(30)
    out.update(_figures(seen.first, stdout.lines, stderr.lines))
    out["health_checks"] = {"count": seen.checks, "slowest_s": seen.check_max, "timeouts_1s": seen.timeouts}
    return out


def _figures(
    first: dict[str, float], stdout: list[tuple[float, str]], stderr: list[tuple[float, str]]
) -> dict[str, Any]:
    listening = [t for t, line in stdout if "listening on" in line]
    log = [_log_entry(t, line) for t, line in stderr]
    replays = [m.groups() for e in log if (m := REPLAYED.search(e["message"]))]
    return {
        "tcp_s": first.get("tcp"),
        "port_s": first.get("port"),
        "not_serving_s": first.get("not_serving"),
        "saw_not_serving": "not_serving" in first,
        "serving_s": first.get("serving"),
        "identify_ok_s": first.get("identify OK"),
        "listening_line_s": listening[0] if listening else None,
        "first_seen": dict(sorted(first.items(), key=lambda kv: kv[1])),
        "replays": [{"gallery": g, "snapshot_change": int(s), "replayed": int(r)} for g, s, r in replays],
        "log": log,
    }


def _log_entry(t: float, line: str) -> dict[str, Any]:
    """A log line: arrival time, level, message (the server's JSON lines; others as they are)."""
    try:
        entry = json.loads(line)
        return {"t": t, "level": entry.get("level", ""), "message": str(entry.get("message", ""))[:400]}
    except (ValueError, AttributeError):
        return {"t": t, "level": "", "message": line[:400]}


# ---- baselines -----------------------------------------------------------------------------------
def import_seconds(module: str, rounds: int) -> list[float]:
    """Wall time of ``python -c "import MODULE"``, in a fresh process each time."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        out.append(time.perf_counter() - t0)
    return out


def empty_start(parent: Path, env: dict[str, str]) -> dict[str, Any]:
    """A start on an empty data directory (migrations, first admin key; no gallery, no Identify)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="faceid-startup-empty-", dir=parent))
    try:
        return start_once(tmp, env, "", identify=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- report --------------------------------------------------------------------------------------
COLUMNS = [
    ("port", "port_s"),
    ("NOT_SERVING", "not_serving_s"),
    ("SERVING", "serving_s"),
    ("Identify OK", "identify_ok_s"),
    ("'listening'", "listening_line_s"),
    ("SIGTERM→exit", "sigterm_to_exit_s"),
]


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "—"


def print_table(rows: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"{'start':<22}" + "".join(f"{name:>14}" for name, _ in COLUMNS) + f"{'peak RSS MiB':>14}")
    for label, r in rows:
        print(
            f"{label:<22}"
            + "".join(f"{_cell(r.get(key)):>14}" for _, key in COLUMNS)
            + f"{_cell(r.get('peak_rss_mib')):>14}"
        )


def print_log(r: dict[str, Any], until: float) -> None:
    """The log lines up to ``until`` s, each with the gap since the previous one (or the start)."""
    before = 0.0
    for e in r["log"]:
        if e["t"] > until:
            break
        print(f"  {e['t']:7.2f} s (+{e['t'] - before:6.2f})  {e['level']:<7} {e['message'][:140]}")
        before = e["t"]


def medians(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    keys = [key for _, key in COLUMNS] + ["tcp_s", "peak_rss_mib"]
    out: dict[str, float | None] = {}
    for key in keys:
        values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
        out[key] = statistics.median(values) if values else None
    return out


def tree_changes() -> list[str]:
    """The files changed in the working tree against its commit (others edit while this runs);
    read without taking git's index lock."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.splitlines()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery-size", type=int, required=True, help="faces in the gallery")
    ap.add_argument("--data-dir", type=Path, required=True, help="built here when it holds no such gallery")
    ap.add_argument("--rounds", type=int, default=3, help="restarts timed")
    ap.add_argument("--poll", type=float, default=0.02, help="seconds between polls")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a start may take")
    ap.add_argument("--cold", action="store_true", help="evict the data files from the page cache first")
    ap.add_argument("--server-env", action="append", default=[], help="FACEID_SETTING=value, every start")
    ap.add_argument(
        "--build-env", action="append", default=[], help="FACEID_SETTING=value, the build's server only"
    )
    ap.add_argument("--batch", type=int, default=5000, help="faces per EnrollBatch call (build)")
    ap.add_argument("--vectors", choices=["fitted", "uniform"], default="fitted")
    ap.add_argument("--api-key", default=os.environ.get("FACEID_API_KEY", ""), help="else the marker's")
    ap.add_argument("--no-baselines", action="store_true", help="skip the import and empty-dir starts")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.server_env)
    build_env = {**env, **dict(kv.split("=", 1) for kv in args.build_env)}
    data_dir = args.data_dir.resolve()
    print(
        f"startup: gallery {args.gallery_size:,} faces in {data_dir}, {args.rounds} rounds, poll "
        f"{args.poll * 1000:.0f} ms, {'cold (data evicted)' if args.cold else 'warm page cache'}, "
        f"server env {env or '{}'}, build env {build_env or '{}'}"
    )
    info = machine()
    print(f"machine: {info}")
    payload: dict[str, Any] = {
        "benchmark": "startup",
        "gallery_size": args.gallery_size,
        "data_dir": str(data_dir),
        "rounds": args.rounds,
        "poll_s": args.poll,
        "cold": args.cold,
        "server_env": env,
        "machine": info,
        "tree_changes": tree_changes(),
    }
    payload["build"] = build_gallery(data_dir, args.gallery_size, build_env, args.batch, args.vectors)
    api_key = args.api_key or read_marker(data_dir).get("admin_key", "")
    payload["snapshot_bytes"] = snapshot_bytes(data_dir)
    payload["data_dir_bytes"] = tree_bytes(data_dir)
    print(
        f"snapshot {payload['snapshot_bytes'] / MIB:,.0f} MiB; "
        f"data dir {payload['data_dir_bytes'] / MIB:,.0f} MiB"
    )
    if not args.no_baselines:
        payload["import_engine_service_s"] = import_seconds("faceid.engine.service", 3)
        print(f"python -c 'import faceid.engine.service': {_seconds(payload['import_engine_service_s'])}")
        payload["empty"] = empty_start(data_dir.parent, env)
    rounds = []
    for i in range(args.rounds):
        if args.cold:
            evict(data_dir)
        r = start_once(data_dir, env, api_key, identify=True, poll=args.poll, timeout=args.timeout)
        rounds.append(r)
        if r["faces"] != args.gallery_size:
            print(
                f"warning: round {i + 1}: the gallery holds {r['faces']:,} faces, not {args.gallery_size:,}"
            )
        print(
            f"round {i + 1}: SERVING {_cell(r['serving_s'])} s, Identify OK {_cell(r['identify_ok_s'])} s, "
            f"NOT_SERVING seen {r['saw_not_serving']}; slowest health Check "
            f"{r['health_checks']['slowest_s']:.2f} s ({r['health_checks']['timeouts_1s']} past 1 s); "
            "answers first seen " + ", ".join(f"{k} {v:.2f}" for k, v in r["first_seen"].items()),
            flush=True,
        )
    payload["results"] = rounds
    payload["median"] = medians(rounds)
    rows = [(f"round {i + 1}", r) for i, r in enumerate(rounds)] + [("median", payload["median"])]
    if "empty" in payload:
        rows.append(("empty data dir", payload["empty"]))
    print(f"\nseconds from the process start ({args.gallery_size:,} faces):")
    print_table(rows)
    if rounds:
        print(
            f"log lines of round 1 up to SERVING ({rounds[0]['serving_s']:.2f} s), with the gap before each:"
        )
        print_log(rounds[0], (rounds[0]["serving_s"] or 0) + 0.5)
    write_json(args.out / f"{args.name or f'startup_{args.gallery_size}'}.json", payload)
    return payload


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + " s"


if __name__ == "__main__":
    main()
