"""Server configuration in one typed place: defaults, then a TOML file, then FACEID_* environment
variables, then command-line flags (each overriding the one before)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    #: Address to listen on; 127.0.0.1 by default (put TLS or a proxy in front for other hosts).
    host: str = "127.0.0.1"
    port: int = 50051
    #: Data directory: the SQLite database and the index snapshots.
    data_dir: Path = Path("faceid-data")
    #: SQLAlchemy URL of the store; default SQLite in the data directory.
    database_url: str = ""
    #: Largest request or response (photos are large): 32 MiB.
    max_message_bytes: int = 32 * MIB
    #: Server processes on the one port (SO_REUSEPORT: the kernel deals out connections, not
    #: calls) and the one store.  A process runs Python on one core at a time, so on a machine
    #: with more cores than one process can keep busy, give more: each holds its own copy of the
    #: indexes in RAM and catches up with the others' writes before each search.  The first one
    #: writes the snapshots.
    processes: int = 1
    #: Threads for CPU-bound work (decoding, detection, embedding, search), per process.
    workers: int = 4
    #: Micro-batching (adaptive): while ``batch_inflight`` batches run, new requests wait and go
    #: together in the next batch (at most ``max_batch`` items); ``batch_window_ms`` > 0 also holds
    #: a request arriving at an idle server that long to gather more.
    batch_window_ms: float = 0.0
    max_batch: int = 256
    #: One batch at a time (per gallery and search settings) makes the batches bigger and holds the
    #: GIL less: at 1M faces, 32 callers, +22 % identify calls/s and p99 39 ms against 57 ms with 2.
    batch_inflight: int = 1
    #: Calls in progress beyond this are refused at once with RESOURCE_EXHAUSTED (load shedding).
    max_concurrent_rpcs: int = 64
    #: Calls that have arrived but that the server has not started yet (gRPC core's pending queue,
    #: where calls wait when the server is saturated): beyond it gRPC refuses them at once (0: no limit).
    max_pending_calls: int = 0
    #: Requests in progress may hold this many bytes together (photos are large); a call that would
    #: go beyond it is refused with RESOURCE_EXHAUSTED, so that memory stays bounded.
    max_inflight_bytes: int = 256 * MIB
    #: A refused call carries ``grpc-retry-pushback-ms`` (gRPC's standard hint, honoured by gRPC
    #: retry policies): retry after about this many ms (jittered ±50 %, so retries spread out),
    #: growing ×1.5 per quarter second of sustained refusals up to the maximum (servicer.Backoff).
    overload_pushback_ms: int = 100
    overload_pushback_max_ms: int = 20_000
    #: The gate (server/auth.py): a call's request message must arrive within this many seconds of
    #: its headers, and each streamed item within ``stream_idle_seconds`` of the one before; else
    #: the call ends with DEADLINE_EXCEEDED.  A call waiting for its message holds no engine slot.
    request_arrival_seconds: float = 10.0
    stream_idle_seconds: float = 60.0
    #: Calls one connection may carry at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; a client's
    #: further calls wait for a free stream): a bound on what one connection's held calls cost in
    #: memory.  Not lower: a client that opens more calls than this at once on a new connection,
    #: before it has read the server's settings, gets the excess refused (UNAVAILABLE).
    max_streams_per_connection: int = 1000
    #: Erasure bound (seconds): this long after a delete is acknowledged, also across a crash and
    #: restart, no file in the data directory holds the erased embeddings (engine/service.py).
    erasure_seconds: float = 5.0
    #: Several processes: the change log is trimmed up to a snapshot once it is this old (seconds).
    change_log_keep_seconds: float = 300.0
    #: Keepalive: ping an idle connection every this many ms; drop it when no answer in the timeout.
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    #: On SIGTERM: stop accepting, let calls in progress finish for this long, snapshot, exit.
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    #: API keys are required unless this is turned off (``--no-auth``; logged as a warning).
    auth: bool = True
    #: Keys created or revoked by ``faceid keys`` in another process take effect within this period.
    key_refresh_seconds: float = 2.0
    #: TLS: the server's certificate chain and private key (PEM files); both or neither.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Mutual TLS: CA certificate(s) that client certificates must chain to; clients without one are refused.
    tls_client_ca_file: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.max_message_bytes < 1 * MIB:
            raise ValueError("max_message_bytes must be at least 1 MiB")
        counts = (self.processes, self.workers, self.max_batch, self.max_concurrent_rpcs, self.batch_inflight)
        if min(counts) < 1:
            raise ValueError(
                "processes, workers, max_batch, batch_inflight and max_concurrent_rpcs must be positive"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("mutual TLS (tls_client_ca_file) needs tls_cert_file and tls_key_file too")
        if self.overload_pushback_ms < 0:
            raise ValueError("overload_pushback_ms must not be negative")
        if self.key_refresh_seconds <= 0:
            raise ValueError("key_refresh_seconds must be positive")
        if min(self.request_arrival_seconds, self.stream_idle_seconds) <= 0:
            raise ValueError("request_arrival_seconds and stream_idle_seconds must be positive")
        if self.erasure_seconds < 0 or self.change_log_keep_seconds < 0:
            raise ValueError("erasure_seconds and change_log_keep_seconds must not be negative")
        if self.max_streams_per_connection < 1:
            raise ValueError("max_streams_per_connection must be positive")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @classmethod
    def load(
        cls, file: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> ServerConfig:
        values: dict[str, Any] = {}
        if file is not None:
            with file.open("rb") as handle:
                values.update(tomllib.load(handle).get("server", {}))
        env = os.environ if env is None else env
        for f in fields(cls):
            key = f"FACEID_{f.name.upper()}"
            if key in env:
                values[f.name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **{k: _coerce(cls, k, v) for k, v in values.items()})


def _coerce(cls: type[ServerConfig], name: str, value: Any) -> Any:
    known = {f.name: f for f in fields(cls)}
    if name not in known:
        raise ValueError(f"unknown server setting {name!r}; known: {', '.join(sorted(known))}")
    default = getattr(cls(), name)
    if isinstance(default, Path):
        return Path(value)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)
