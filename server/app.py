"""Build and run the gRPC server: the FaceId service, health checking, reflection, metrics,
graceful shutdown.

A start, in order: claim the data directory and the store; open the store (migrated) and the
API keys; bind the port and start serving with health checking at NOT_SERVING (for ``""`` and
``faceid.v1.FaceId``: every FaceId call meanwhile ends at once with UNAVAILABLE, saying the server
is starting and how far it is); open every gallery's index (snapshot + change log); then SERVING,
and only then the "listening on" line.  An orchestrator that watches health therefore sends no
traffic too early and can tell a server that is still loading a large gallery from a dead one
(the port answers).  A stop: NOT_SERVING for ``drain_seconds`` while calls are still served, then
the port closes, calls in progress get ``grace_seconds``, the snapshots are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import json
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from faceid.engine.domain.access import ALL_GALLERIES, NewKey, Role
from faceid.engine.service import Engine, OpeningStoppedError
from faceid.engine.service.access import StoreClaim
from faceid.proto.faceid.v1 import faceid_pb2, faceid_pb2_grpc
from faceid.server.auth import AuthInterceptor, GateLimits
from faceid.server.config import ServerConfig
from faceid.server.metrics import HttpEndpoint, Metrics, MetricsInterceptor, ServerState, method_kinds
from faceid.server.reflection import enable_reflection
from faceid.server.servicer import FaceIdServicer

log = logging.getLogger("faceid.server")
SERVICE_NAME = faceid_pb2.DESCRIPTOR.services_by_name["FaceId"].full_name
#: The health checking service names that follow the server's readiness ("": the whole server).
HEALTH_NAMES = ("", SERVICE_NAME)
T = TypeVar("T")
#: A stop during the start waits this long for the gallery being opened, then exits without it.
STOP_OPENING_SECONDS = 5.0


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (no photos or embeddings are ever logged)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class StartupError(Exception):
    """The server cannot start, for a reason its operator can fix (the message says how)."""


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    pending = (
        [
            ("grpc.server.max_pending_requests", config.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", config.max_pending_calls),
        ]
        if config.max_pending_calls
        else []
    )
    return [
        *pending,
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # One connection cannot hold every call: more wait in the client (HTTP/2 flow control).
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # SO_REUSEPORT only for the server's own processes: with it, a second server on a busy port
        # would start without an error and take a share of the connections.
        ("grpc.so_reuseport", 1 if config.processes > 1 else 0),
    ]


class Server:
    """A faceid server: ``start`` binds and answers health checks (NOT_SERVING), ``open`` opens the
    galleries and turns SERVING, ``stop`` drains it and snapshots every gallery."""

    def __init__(
        self, config: ServerConfig, engine: Engine | None = None, first: bool = True, process: int = 0
    ) -> None:
        """``first``: the first (or only) process of the server, the one that writes snapshots;
        ``process``: its number (0 for the first), which places its metrics port."""
        self.config = config
        self.process = process
        settings = config.engine_for(first)
        #: The store claimed for this server before anything is opened (the first process claims
        #: for the group): a second server on one PostgreSQL database is refused at start.
        self.owner = StoreClaim(settings) if first and engine is None else None
        if self.owner is not None and not self.owner.acquire():
            raise StartupError(
                "the database is in use by another faceid server; stop it, or give this one its own "
                "database (several processes on one store: --processes N)"
            )
        self.metrics = Metrics(process, config.processes, _version()) if config.metrics else None
        self.engine = engine or Engine(settings, load=False, telemetry=self.metrics)
        if self.metrics is not None:
            self.metrics.info["model"] = self.engine.model_id
        refused = self.metrics.refusal if self.metrics is not None else None
        self.servicer = FaceIdServicer(self.engine, config, refused)
        self.keys = self.engine.key_ring()
        self._refresher: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._serving = False
        self._draining = False
        #: Unix time the server turned SERVING (0 before).
        self.ready_time = 0.0
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        gate = AuthInterceptor(
            self.keys if config.auth else None,
            GateLimits(config.request_arrival_seconds, config.stream_idle_seconds),
            self._not_ready,
        )
        interceptors: list[Any] = [gate]
        if self.metrics is not None:  # outside the gate: its refusals are counted too
            services = [
                faceid_pb2.DESCRIPTOR.services_by_name["FaceId"],
                health_pb2.DESCRIPTOR.services_by_name["Health"],
            ]
            interceptors.insert(0, MetricsInterceptor(self.metrics, method_kinds(*services)))
        # No maximum_concurrent_rpcs: gRPC counts calls from their headers on, health checks
        # included, so whoever can open calls could fill it (server/auth.py); the gate and the
        # servicer bound the work instead.
        self.grpc = grpc.aio.server(options=grpc_options(config), interceptors=interceptors)
        faceid_pb2_grpc.add_FaceIdServicer_to_server(self.servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        # Reflection v1 and v1alpha (server/reflection.py), listing both beside these.
        enable_reflection(
            self.grpc, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        )
        address = f"{config.host}:{config.port}"
        try:
            if config.tls:
                self.port = self.grpc.add_secure_port(address, server_credentials(config))
            else:
                self.port = self.grpc.add_insecure_port(address)
        except RuntimeError as exc:  # gRPC says only "Failed to bind"
            self.engine.close()
            raise StartupError(_port_taken(config)) from exc
        self.endpoint: HttpEndpoint | None = None
        if self.metrics is not None:
            self._serve_metrics(self.metrics)
        #: The admin key made on a first start (no key was ever created): printed once by ``serve``.
        #: Made last, once the port and the metrics port are bound, so that a start that fails
        #: does not swallow it.
        self.first_key: NewKey | None = None
        if config.auth and not self.keys.keys.any_created():
            self.first_key = self.keys.keys.create(Role.ADMIN, [ALL_GALLERIES], "first admin key")
            self.keys.refresh()

    @property
    def metrics_port(self) -> int:
        """The port of this process's ``/metrics`` (0: metrics are off)."""
        return self.endpoint.port if self.endpoint is not None else 0

    def _not_ready(self) -> str:
        """The gate's question (server/auth.py): why FaceId calls cannot be served yet ("": they can)."""
        if self._serving or self.engine.ready:
            return ""
        opened, to_open = self.engine.opening()
        progress = f" ({opened} of {to_open} galleries open)" if to_open else ""
        return (
            f"the server is starting: it is opening the galleries' indexes{progress}; retry in a few "
            "seconds (health checking says SERVING once it is ready)"
        )

    async def start(self) -> None:
        """Bind and serve health checks (NOT_SERVING) and metrics; :meth:`open` makes it ready."""
        if not self.config.auth:
            log.warning("authentication is OFF (--no-auth): anyone who reaches the port can read and write")
        if not self.config.tls and self.config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving on %s without TLS: keys and photos cross the network", self.config.host)
        for name in HEALTH_NAMES:
            await _set(self.health, name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        if self.config.auth:
            self._refresher = asyncio.create_task(self._refresh_keys())
        log.info(
            "faceid bound to %s:%d; opening the galleries (health: NOT_SERVING until ready)",
            self.config.host,
            self.port,
        )

    def _serve_metrics(self, metrics: Metrics) -> None:
        host, port = self.config.metrics_address(self.process)
        try:
            self.endpoint = metrics.serve(host, port)
        except OSError as exc:
            self.engine.close()
            raise StartupError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror}; give another "
                "metrics=HOST:PORT (port 0: a free one), or leave metrics off"
            ) from None
        admission = self.servicer.admission
        metrics.watch(
            ServerState(
                ready=lambda: self._serving and not self._draining,
                opening=self.engine.opening,
                ready_time=lambda: self.ready_time,
                inflight=lambda: (admission.inflight_calls, admission.inflight_bytes),
                readings=self.engine.readings,
            )
        )

    async def open(self, group: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Open every gallery's index (in a thread), then turn SERVING; False when a stop came
        first (it stays NOT_SERVING).  ``group``: awaited between the two, e.g. until every
        process of the server has opened its galleries (``--processes N``: none turns SERVING
        alone, so no connection the port hands out lands on a process still opening)."""
        began = time.monotonic()
        self._opening = asyncio.create_task(self.engine.open())
        try:
            await asyncio.shield(self._opening)  # a cancelled start leaves it to stop()
        except OpeningStoppedError:
            return False
        if group is not None:
            await group()
        self._serving = True
        self.ready_time = time.time()
        for name in HEALTH_NAMES:
            await _set(self.health, name, health_pb2.HealthCheckResponse.SERVING)
        opened, _ = self.engine.opening()
        log.info(
            "faceid serving on %s:%d: %d galleries opened in %.1f s, ready %.1f s after the process "
            "started (%s)",
            self.config.host,
            self.port,
            opened,
            time.monotonic() - began,
            self.ready_time - process_start_time(),
            json.dumps({k: str(v) for k, v in asdict(self.config).items()}),
        )
        return True

    async def stop(self) -> None:
        """Drain (NOT_SERVING while still serving, ``drain_seconds``), stop accepting calls, let
        those in progress finish (``grace_seconds``), snapshot, close."""
        self._draining = True
        for name in HEALTH_NAMES:
            await _set(self.health, name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._serving and self.config.drain_seconds > 0:
            log.info("draining: NOT_SERVING for %.1f s before the port closes", self.config.drain_seconds)
            await asyncio.sleep(self.config.drain_seconds)
        self._serving = False
        if self._refresher is not None:
            self._refresher.cancel()
        await self.grpc.stop(self.config.grace_seconds)
        opened = True
        if self._opening is not None and not self._opening.done():  # stopped while starting
            self.engine.stop_opening()  # it gives up before its next gallery
            done, _ = await asyncio.wait([self._opening], timeout=STOP_OPENING_SECONDS)
            opened = bool(done)
        served = self.engine.ready
        if opened:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
        else:  # a gallery still loading, or a database that does not answer: nothing to save
            log.warning("stopped while still opening the galleries; nothing was served, nothing to save")
        if self.endpoint is not None:
            self.endpoint.close()
        if self.owner is not None:
            self.owner.release()
        log.info(
            "faceid stopped%s", "; index snapshots written" if served and opened and self.process == 0 else ""
        )

    async def _refresh_keys(self) -> None:
        """Reload the keys now and then, so that ``faceid keys`` changes reach a running server."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.key_refresh_seconds)
            try:
                await loop.run_in_executor(None, self.keys.refresh)
            except Exception as exc:  # the database is down: keep the keys we have
                log.warning("could not reload API keys: %s", type(exc).__name__)


def _version() -> str:
    try:
        return metadata.version("faceid")
    except metadata.PackageNotFoundError:
        return ""


def process_start_time() -> float:
    """Unix time this process started (Linux's /proc; the time now where it cannot be read)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """TLS from the configured PEM files; with a client CA, clients must show a certificate it signed."""
    chain = Path(config.tls_cert_file).read_bytes()
    key = Path(config.tls_key_file).read_bytes()
    ca = Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


async def _set(servicer: Any, name: str, status: Any) -> None:
    result = servicer.set(name, status)
    if asyncio.iscoroutine(result):
        await result


class Spawned(NamedTuple):
    proc: subprocess.Popen[str]
    address: str
    #: The admin key the server printed on its first start ("" when it printed none).
    admin_key: str


def spawn(
    data_dir: Path,
    *flags: str,
    env: dict[str, str] | None = None,
    lines: list[str] | None = None,
    ready: bool = True,
) -> Spawned:
    """Start ``faceid serve`` in a child process on a free loopback port; return once it serves
    ("listening on"), or without ``ready`` once it has bound the port and opens its galleries.
    ``lines`` gets what it printed until then (e.g. its metrics endpoints).

    For tests and benchmarks; stop it with SIGTERM (graceful) or SIGKILL (a crash).  Its log goes
    to ``server.log`` in the data directory (a pipe nobody reads would fill and stall the server).
    """
    cmd = serve_command(data_dir, *flags)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "server.log"
    with log_file.open("a") as log_handle:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log_handle,
            text=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    assert proc.stdout is not None
    admin_key = ""
    while line := proc.stdout.readline():
        if lines is not None:
            lines.append(line.rstrip("\n"))
        if key := re.search(r"admin key .*: (faceid_\S+)", line):
            admin_key = key.group(1)
        if match := re.search(
            rf"{'listening' if ready else 'opening the galleries'} on ([\w.\[\]:]+:\d+)", line
        ):
            return Spawned(proc, match.group(1), admin_key)
    proc.kill()
    proc.wait(30)
    raise RuntimeError(f"the server did not start: {log_file.read_text()[-4000:]}")


def serve_command(data_dir: Path, *flags: str) -> list[str]:
    """The command line of ``faceid serve`` on a free port (0) in ``data_dir``, logging warnings
    and worse, then ``flags`` (later flags win)."""
    cli = [sys.executable, "-m", "faceid.client.cli", "serve"]
    return [*cli, "--port", "0", "--data-dir", str(data_dir), "--log-level", "WARNING", *flags]


class Bound(NamedTuple):
    """A server process has bound its port and answers health checks (NOT_SERVING: opening)."""

    process: int
    port: int
    #: The admin key made on a first start, shown once ("" when none was made).
    admin_key: str = ""
    #: Its ``/metrics`` port (0: metrics are off).
    metrics_port: int = 0


class Ready(NamedTuple):
    """A server process is SERVING."""

    process: int


def announce_bound(config: ServerConfig, bound: list[Bound]) -> None:
    """The lines ``serve`` prints once every process has bound the port (``spawn`` and scripts
    read them): the admin key of a first start, the metrics endpoints, and where it is opening."""
    if key := next((b.admin_key for b in bound if b.admin_key), ""):
        print(f"faceid admin key (shown once, keep it safe): {key}", flush=True)
    if config.metrics:
        host = config.metrics_address(0)[0]
        where = ", ".join(f"http://{_url_host(host)}:{b.metrics_port}/metrics" for b in bound)
        print(f"faceid metrics on {where}", flush=True)
    print(f"faceid opening the galleries on {_address(config, bound)} (health: NOT_SERVING)", flush=True)


def announce_ready(config: ServerConfig, bound: list[Bound]) -> None:
    """The line ``serve`` prints once every process serves."""
    print(f"faceid listening on {_address(config, bound)}", flush=True)


def _address(config: ServerConfig, bound: list[Bound]) -> str:
    group = f" ({len(bound)} processes)" if len(bound) > 1 else ""
    return f"{config.host}:{bound[0].port}{group}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


Heard = Callable[[Bound | Ready], None]


async def serve(
    config: ServerConfig,
    first: bool = True,
    process: int = 0,
    heard: Heard | None = None,
    group: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully.  ``heard`` is told when the port is
    bound (:class:`Bound`) and when the galleries are open (:class:`Ready`); by default both are
    printed (:func:`announce_bound`, :func:`announce_ready`).  ``first`` and ``process`` as for
    :class:`Server`; ``group`` as for :meth:`Server.open`."""
    server = Server(config, first=first, process=process)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    bound = Bound(
        process, server.port, server.first_key.token if server.first_key else "", server.metrics_port
    )
    if heard is None:
        announce_bound(config, [bound])
    else:
        heard(bound)

    async def opened() -> None:  # told before waiting for the group: the supervisor waits for all
        if heard is not None:
            heard(Ready(process))
        if group is not None:
            await group()

    opening = asyncio.create_task(server.open(opened))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([opening, stopped], return_when=asyncio.FIRST_COMPLETED)
    if not opening.done():
        opening.cancel()  # stopped first (the galleries' own opening is shielded: stop ends it)
    elif error := opening.exception():
        await server.stop()
        raise StartupError(
            f"the galleries could not be opened ({type(error).__name__}: {error}); the log says "
            "more; if it names the database, check that it is reachable, then start again"
        ) from error
    elif opening.result():
        # The libraries, models and caches loaded so far live as long as the process: move them out
        # of the cycle collector's sight, or each full collection stops the server for ~0.1-0.5 s.
        gc.collect()
        gc.freeze()
        if heard is None:
            announce_ready(config, [bound])
        await stopped
    await server.stop()


def _process_main(config: ServerConfig, process: int, heard: Any, group_open: Any) -> None:
    """One process of ``--processes N``: it tells the supervisor through ``heard`` and turns
    SERVING once ``group_open`` (an event the supervisor sets when every process is open) is set."""
    configure_logging(config.log_level)

    async def group() -> None:
        while not await asyncio.to_thread(group_open.wait, 0.5):
            pass

    try:
        asyncio.run(serve(config, process == 0, process, heard.put, group))
    except StartupError as exc:
        log.error("%s", exc)
        sys.exit(1)


def _port_taken(config: ServerConfig) -> str:
    return (
        f"{config.host}:{config.port} is already in use (another faceid server, or another program); "
        "stop it, or give another --port (several processes on one port: --processes N)"
    )


def check_port_free(config: ServerConfig) -> None:
    """Refuse a port something already listens on (port 0, a fresh one, always passes).

    gRPC binds with SO_REUSEPORT when the server has several processes, and the kernel would let a
    second server that did the same share the port silently; a plain bind, without SO_REUSEPORT,
    fails on any port in use, whoever holds it.  (SO_REUSEADDR only lets it pass connections of
    an earlier server that are closing.)
    """
    if config.port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {config.host!r}: {exc.strerror}; give a host name or address"
        ) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(_port_taken(config)) from None
                if exc.errno != errno.EADDRNOTAVAIL:  # e.g. no IPv6 here: gRPC will say if it matters
                    raise StartupError(
                        f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
                    ) from None


LOCK_FILE = "faceid.lock"


@contextlib.contextmanager
def own_data_dir(config: ServerConfig) -> Iterator[None]:
    """Hold the data directory's lock while the server runs: a second server on the same directory
    (its database, its snapshots) would lose the first's galleries, so it is refused at start.

    An advisory ``flock`` on ``faceid.lock``, which holds the owner's process id for the message;
    the kernel releases it when the owner dies, even by SIGKILL, so a crash never leaves a stale lock.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = config.data_dir / LOCK_FILE
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise StartupError(
                f"the data directory {config.data_dir} is in use by another faceid server (process {owner}); "
                "stop it, or give this one another --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def serve_processes(config: ServerConfig) -> int:
    """Run ``config.processes`` server processes on one port until SIGINT or SIGTERM (passed on
    to each, which shuts down gracefully); the exit status.

    The first process starts alone (it migrates the store, makes the first admin key, binds the
    port, perhaps port 0), the others then bind the same port.  When one of them dies the others
    are stopped too and the status is 1: a supervisor (systemd, Kubernetes) restarts the whole.
    """
    with own_data_dir(config):
        check_port_free(config)
        if config.processes == 1:
            asyncio.run(serve(config))
            return 0
        return _supervise(config)


def _supervise(config: ServerConfig) -> int:
    """``serve_processes`` for several processes, the data directory locked and the port free.

    Each process starts once the one before has bound the port (the first migrates the store,
    makes the first admin key, binds the port, perhaps port 0); they open their galleries side by
    side and all turn SERVING together, once the last is open (``group_open``).  A SIGINT or
    SIGTERM at any point stops them all with status 0; a process that dies, at any point, stops
    the others with status 1."""
    ctx = mp.get_context("spawn")  # no fork: gRPC and faiss threads do not survive one
    heard: Any = ctx.Queue()
    group_open = ctx.Event()
    procs: list[Any] = []
    stopping = False

    def stop(_signum: int = 0, _frame: Any = None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: a graceful stop

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    news = _Heard(heard, procs, lambda: stopping)
    try:
        port = config.port
        for i in range(config.processes):
            if stopping:
                return 0
            proc = ctx.Process(
                target=_process_main,
                args=(replace(config, port=port), i, heard, group_open),
                name=f"faceid-{i}",
            )
            proc.start()
            procs.append(proc)
            bound = news.wait(Bound, i)
            if bound is None:
                return news.ended("did not start")
            port = bound.port
        announce_bound(config, [news.said[Bound, i] for i in range(config.processes)])
        for i in range(config.processes):
            if news.wait(Ready, i) is None:
                return news.ended("did not open its galleries")
        group_open.set()
        announce_ready(config, [news.said[Bound, i] for i in range(config.processes)])
        mp_connection.wait([p.sentinel for p in procs])  # until one ends, or a signal stops them
        return 0 if stopping else news.ended("exited")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        stop()  # also after an error here: no process outlives the supervisor
        for p in procs:
            p.join(config.grace_seconds + config.drain_seconds + 60)
            if p.is_alive():
                p.kill()
                p.join()


class _Heard:
    """What the server processes said so far (they speak in any order)."""

    def __init__(self, queue: Any, procs: list[Any], stopping: Callable[[], bool]) -> None:
        self.queue = queue
        self.procs = procs
        self.stopping = stopping
        self.said: dict[tuple[type, int], Any] = {}

    def wait(self, kind: type[T], process: int) -> T | None:
        """Process ``process``'s message of ``kind``, or None when any process exits first or a
        stop comes (opening a large gallery may take minutes: no time limit while they live)."""
        while (kind, process) not in self.said:
            try:
                said = self.queue.get(timeout=0.5)
            except queue.Empty:
                if self.stopping() or not all(p.is_alive() for p in self.procs):
                    return None
                continue
            self.said[type(said), said.process] = said
        return cast(T, self.said[kind, process])

    def ended(self, what: str) -> int:
        """The exit status when a wait came back empty, or the processes were waited on: 0 for a
        stop asked for, else 1 with the process that ended in the log."""
        if self.stopping():
            return 0
        dead = next((p for p in self.procs if not p.is_alive()), None)
        if dead is not None:
            dead.join()
            log.error(
                "server process %s %s (exit status %s); stopping the others", dead.name, what, dead.exitcode
            )
        return 1
