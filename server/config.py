"""The configuration tree, loaded once: :class:`ServerConfig` (the transport, security and process
settings) holding the engine's tree (:class:`~faceid.engine.config.EngineConfig`) as ``engine``.

Sources, each overriding the one before: defaults, a TOML file's ``[server]`` table, ``FACEID_*``
environment variables, command-line flags.  Every leaf of the tree has one name (:func:`settings`):
the server's and the engine's top-level settings by their own names (``port``, ``data_dir``,
``workers``), the engine's sections by dotted names (``index.nprobe_min``,
``pipeline.detect.upsample``).  Every value is range-checked when the tree is built, with the
setting's section in the message.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, cast

from faceid.engine.config import DERIVED, EngineConfig

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    #: Address to listen on; 127.0.0.1 by default (put TLS or a proxy in front for other hosts).
    host: str = "127.0.0.1"
    port: int = 50051
    #: Largest request or response (photos are large): 32 MiB.
    max_message_bytes: int = 32 * MIB
    #: Server processes on the one port (SO_REUSEPORT: the kernel deals out connections, not
    #: calls) and the one store.  A process runs Python on one core at a time, so on a machine
    #: with more cores than one process can keep busy, give more: each holds its own copy of the
    #: indexes in RAM and catches up with the others' writes before each search.  The first one
    #: writes the snapshots.
    processes: int = 1
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
    #: growing ×1.5 per quarter second of sustained refusals up to the maximum (admission.Backoff).
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
    #: Keepalive: ping an idle connection every this many ms; drop it when no answer in the timeout.
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    #: On SIGTERM: first ``drain_seconds`` with health checks answering NOT_SERVING while calls
    #: are still served (so that load balancers that watch health move traffic away before the
    #: port closes; 0: close at once), then stop accepting, let calls in progress finish for
    #: ``grace_seconds``, snapshot, exit.
    drain_seconds: float = 0.0
    grace_seconds: float = 10.0
    #: Prometheus metrics (server/metrics.py): ``HOST:PORT`` serves ``/metrics`` there over plain
    #: HTTP with no key (it names the galleries: keep it on loopback or a private network); ""
    #: (the default): off.  Port 0: a free one, printed at start.  With ``processes`` N, process i
    #: serves on PORT+i.
    metrics: str = ""
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
    #: The engine's tree (:class:`faceid.engine.config.EngineConfig`): data directory, database,
    #: workers, batching, erasure, and the ``pipeline`` and ``index`` sections.
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.max_message_bytes < 1 * MIB:
            raise ValueError("max_message_bytes must be at least 1 MiB")
        if min(self.processes, self.max_concurrent_rpcs) < 1:
            raise ValueError("processes and max_concurrent_rpcs must be positive")
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
        if self.max_streams_per_connection < 1:
            raise ValueError("max_streams_per_connection must be positive")
        if self.max_pending_calls < 0:
            raise ValueError(
                f"max_pending_calls must not be negative (0: no limit); got {self.max_pending_calls}"
            )
        if self.max_inflight_bytes < 1:
            raise ValueError(f"max_inflight_bytes must be positive; got {self.max_inflight_bytes}")
        if self.overload_pushback_max_ms < self.overload_pushback_ms:
            raise ValueError("overload_pushback_max_ms must not be below overload_pushback_ms")
        if min(self.keepalive_time_ms, self.keepalive_timeout_ms) < 1:
            raise ValueError("keepalive_time_ms and keepalive_timeout_ms must be positive")
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must not be negative; got {self.grace_seconds}")
        if self.drain_seconds < 0:
            raise ValueError(f"drain_seconds must not be negative; got {self.drain_seconds}")
        if self.metrics:
            self.metrics_address(0)  # raises ValueError saying what to give
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(
                f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL; got {self.log_level!r}"
            )
        if not self.host:
            raise ValueError("host must name an address to listen on (127.0.0.1, ::1, 0.0.0.0, a host name)")

    def metrics_address(self, process: int) -> tuple[str, int]:
        """Where process ``process`` (0 for the first) serves its metrics: (host, port)."""
        host, sep, port = self.metrics.rpartition(":")
        host = host.strip("[]")  # [::1]:9464
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"metrics must be HOST:PORT, e.g. 127.0.0.1:9464 (port 0: a free one); got {self.metrics!r}"
            )
        if int(port) and int(port) + self.processes - 1 > 65535:
            raise ValueError(f"metrics port {port} + {self.processes} processes goes past 65535")
        return host, int(port) + process if int(port) else 0

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def data_dir(self) -> Path:
        return self.engine.data_dir

    def engine_for(self, first: bool) -> EngineConfig:
        """The engine's settings for one of this server's processes (``first``: the one that
        writes snapshots)."""
        return replace(self.engine, shared=self.processes > 1, snapshots=first)

    @classmethod
    def load(
        cls, file: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> ServerConfig:
        """Defaults, then ``file``'s ``[server]`` table (engine sections as sub-tables, e.g.
        ``[server.index]``), then ``FACEID_*`` variables (``FACEID_PORT``,
        ``FACEID_INDEX__NPROBE_MIN``: ``__`` for a section), then ``overrides`` (flags; a dotted
        name for a section's setting, e.g. ``{"index.nprobe_min": 32}``), each overriding the one
        before.  Raises ValueError naming the setting for an unknown name or a value out of range."""
        known = settings()
        values: dict[str, Any] = {}
        if file is not None:
            with file.open("rb") as handle:
                values.update(_flatten(tomllib.load(handle).get("server", {})))
        env = os.environ if env is None else env
        for name in known:
            key = "FACEID_" + name.upper().replace(".", "__")
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return _build(cls, {name: _coerce(known, name, value) for name, value in values.items()})


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _leaves(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Dotted setting name → path of field names, for every leaf of a config dataclass."""
    found: dict[str, tuple[str, ...]] = {}
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            for name, path in _leaves(type(default), f"{prefix}{f.name}.").items():
                found[name] = (f.name, *path)
        else:
            found[f"{prefix}{f.name}"] = (f.name,)
    return found


@cache
def settings() -> dict[str, tuple[str, ...]]:
    """Every setting ``faceid serve`` takes: its name (the server's own, the engine's top-level
    ones as they are, ``index.*`` and ``pipeline.*.*`` for the sections) and its path in the tree."""
    names = {name: path for name, path in _leaves(ServerConfig).items() if path[0] != "engine"}
    for name, path in _leaves(EngineConfig).items():
        if name not in DERIVED:
            names[name] = ("engine", *path)
    return names


def _default(path: tuple[str, ...]) -> Any:
    value: Any = ServerConfig()
    for part in path:
        value = getattr(value, part)
    return value


def _coerce(known: dict[str, tuple[str, ...]], name: str, value: Any) -> Any:
    if name not in known:
        raise ValueError(f"unknown server setting {name!r}; known: {', '.join(sorted(known))}")
    default = _default(known[name])
    try:
        if isinstance(default, Path):
            return Path(value)
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"not a yes/no value: {value!r}")
            return text in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError as exc:
        kind = type(default).__name__
        raise ValueError(f"setting {name}: expected {kind}, got {value!r} ({exc})") from None
    return str(value)


def _build(cls: type[ServerConfig], values: dict[str, Any]) -> ServerConfig:
    """The tree with ``values`` (dotted names) set; each section's range checks run with the
    setting's name in the message."""
    known = settings()
    nested: dict[str, Any] = {}
    for name, value in values.items():
        node = nested
        *parents, leaf = known[name]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def make(kind: type, given: dict[str, Any], prefix: str) -> Any:
        args = {}
        for key, value in given.items():
            sub = next(f for f in fields(kind) if f.name == key)
            current = sub.default_factory() if sub.default_factory is not MISSING else sub.default
            args[key] = make(type(current), value, f"{prefix}{key}.") if isinstance(value, dict) else value
        try:
            return kind(**args)
        except (ValueError, TypeError) as exc:
            section = prefix.removeprefix("engine.").rstrip(".").removeprefix("engine")
            raise ValueError(f"{section} settings: {exc}" if section else str(exc)) from None

    return cast(ServerConfig, make(cls, nested, ""))
