"""Prometheus metrics of one server process (``prometheus-client``, the one module that imports it).

Off by default; ``--set metrics=HOST:PORT`` serves ``/metrics`` over plain HTTP on its own port
(loopback is the safe choice: the page has no key and names the galleries; it holds no face data).
With ``--processes N`` each process serves its own page, on PORT, PORT+1, … PORT+N-1 (each is
scraped as its own target; sum over them, e.g. ``sum without (instance)``): the counters are
each process's own, and the gauges say what that process holds (its copy of every index, how far
it is behind the store).  Aggregating in one process would need prometheus-client's multiprocess
files and would lose the per-process state that matters here (a process behind the others, one
still loading).

Names follow Prometheus's conventions (base units, ``_total`` counters).  The call metrics are
the ones of go-grpc-prometheus / java-grpc-prometheus (``grpc_server_handled_total`` and
friends), so the usual gRPC dashboards and alerts work as they are:

=============================================  ====================================================
``grpc_server_started_total``                  calls started: grpc_type, grpc_service, grpc_method
``grpc_server_handled_total``                  calls ended, by status code (+ grpc_code)
``grpc_server_handling_seconds``               histogram of call latency (same labels as started)
``faceid_refused_calls_total``                 calls shed by the server: reason ``calls``/``bytes``
``faceid_pushback_seconds``                    histogram of the retry delays asked of them
``faceid_inflight_calls`` / ``_bytes``         engine calls in progress and their request bytes
``faceid_batch_size``                          histogram of items per micro-batch: batcher
``faceid_batch_wait_seconds``                  histogram of how long a call waited to be batched
``faceid_stage_items_total``                   photos decoded / scanned, faces embedded, probes
                                               searched: stage (decode, detect_hog, detect_cnn,
                                               embed, search)
``faceid_stage_seconds_total``                 worker seconds each stage took (items / seconds:
                                               its throughput while busy)
``faceid_gallery_faces`` / ``_identities``     per gallery (identities recounted every 10 s)
``faceid_gallery_readings_errors_total``       scrapes whose gallery readings failed (the
                                               database is down, say): they showed the last ones
``faceid_gallery_index_info``                  1, labels kind (exact/ivf_pq), training, device
``faceid_gallery_index_bytes``                 RAM the index takes (``_gpu_bytes``: on the GPU)
``faceid_gallery_snapshot_age_seconds``        since the gallery's snapshot file was written
``faceid_gallery_unsaved_changes``             changes since that snapshot, other processes' too
                                               (only from the process that writes snapshots)
``faceid_gallery_changes_behind``              changes other processes logged, not applied here
``faceid_ready``                               1 once serving, 0 while opening galleries/draining
``faceid_galleries_to_open`` / ``_opened``     progress of the start
``faceid_ready_time_seconds``                  unix time it became ready (minus
                                               ``process_start_time_seconds``: the start-up time)
``faceid_server_info``                         1, labels version, model, process, processes
``process_*``, ``python_*``                    the client library's own: resident memory, CPU,
                                               open files, garbage collections
=============================================  ====================================================
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from faceid.engine.domain.results import GalleryReading
from faceid.server.handlers import HandlerInterceptor, behaviour, rebuilt

#: Call latency (seconds): from a cached embedding search (~1 ms) to a clustering call (minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
PUSHBACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)

_CODES = {code.value[0]: code for code in grpc.StatusCode}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerState:
    """What the gauges read on each scrape (callables of the running server)."""

    #: Ready to serve (every gallery open, not draining).
    ready: Callable[[], bool]
    #: (galleries open, galleries to open).
    opening: Callable[[], tuple[int, int]]
    #: Unix time the server became ready (0 until then).
    ready_time: Callable[[], float]
    #: (calls, bytes) in progress in the engine's methods.
    inflight: Callable[[], tuple[int, int]]
    readings: Callable[[], list[GalleryReading]]


class Metrics:
    """One process's registry: the counters and histograms the server and the engine update (it
    is the engine's :class:`~faceid.engine.service.telemetry.Telemetry`) and the gauges read from
    the server on each scrape (:meth:`watch`)."""

    def __init__(self, process: int = 0, processes: int = 1, version: str = "", model: str = "") -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.info = {"version": version, "model": model, "process": str(process), "processes": str(processes)}
        call = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = self._counter("grpc_server_started", "Calls started on the server.", call)
        self.handled = self._counter(
            "grpc_server_handled",
            "Calls completed on the server, whatever their status code.",
            [*call, "grpc_code"],
        )
        self.handling = self._histogram(
            "grpc_server_handling_seconds",
            "Time from a call's start to its end on the server.",
            LATENCY_BUCKETS,
            call,
        )
        self.refused = self._counter(
            "faceid_refused_calls",
            "Calls refused at once with RESOURCE_EXHAUSTED: too many calls (calls) or bytes (bytes) "
            "in progress.",
            ["reason"],
        )
        self.pushback = self._histogram(
            "faceid_pushback_seconds",
            "Retry delays asked of refused callers (grpc-retry-pushback-ms).",
            PUSHBACK_BUCKETS,
        )
        self.batch_size = self._histogram(
            "faceid_batch_size",
            "Items in each micro-batch (probes searched together, faces embedded, photos scanned).",
            BATCH_BUCKETS,
            ["batcher"],
        )
        self.batch_wait = self._histogram(
            "faceid_batch_wait_seconds",
            "How long each call waited for its micro-batch to start.",
            WAIT_BUCKETS,
            ["batcher"],
        )
        self.stage_items = self._counter(
            "faceid_stage_items",
            "Items each stage handled: photos decoded or scanned, faces embedded, probes searched.",
            ["stage"],
        )
        self.stage_seconds = self._counter(
            "faceid_stage_seconds", "Worker seconds each stage took.", ["stage"]
        )

    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    # ---- what the engine reports (Telemetry) --------------------------------------------------
    def batch(self, batcher: str, size: int, waits: Sequence[float]) -> None:
        self.batch_size.labels(batcher).observe(size)
        wait = self.batch_wait.labels(batcher)
        for seconds in waits:
            wait.observe(seconds)

    def stage(self, stage: str, items: int, seconds: float) -> None:
        self.stage_items.labels(stage).inc(items)
        self.stage_seconds.labels(stage).inc(seconds)

    # ---- what the server reports --------------------------------------------------------------
    def refusal(self, reason: str, pushback_ms: float) -> None:
        self.refused.labels(reason).inc()
        self.pushback.observe(pushback_ms / 1000)

    def watch(self, state: ServerState) -> None:
        """Read the server's gauges from ``state`` on every scrape."""
        self.registry.register(_Gauges(state, self.info))

    def serve(self, host: str, port: int) -> HttpEndpoint:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) in a thread of its own."""
        httpd, thread = start_http_server(port, host, registry=self.registry)
        return HttpEndpoint(httpd, thread)


@dataclass
class HttpEndpoint:
    httpd: Any
    thread: Any

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Gauges(Collector):
    """The gauges, read from the running server at scrape time.  Only the gallery readings are
    kept, the last good ones: when reading them fails (the database is down, say) the page still
    answers, with those and ``faceid_gallery_readings_errors_total`` moved, and the log says so
    once per kind of error (a scrape every few seconds must not fill it)."""

    def __init__(self, state: ServerState, info: dict[str, str]) -> None:
        self.state = state
        self.info = info
        self.errors = 0  # counted here, so that a scrape shows its own failure
        self.last: list[GalleryReading] = []
        self.logged: set[str] = set()

    def readings(self) -> list[GalleryReading]:
        try:
            self.last = self.state.readings()
            self.logged.clear()
        except Exception as exc:
            self.errors += 1
            if type(exc).__name__ not in self.logged:
                self.logged.add(type(exc).__name__)
                log.warning(
                    "metrics: reading the galleries failed (%s: %s); the page shows the last readings",
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
        return self.last

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time only: the registry must not call collect() to learn names

    def collect(self) -> Iterable[Metric]:
        state = self.state
        info = GaugeMetricFamily(
            "faceid_server_info", "The server's version and place.", labels=list(self.info)
        )
        info.add_metric(list(self.info.values()), 1)
        yield info
        yield GaugeMetricFamily(
            "faceid_ready",
            "1 once serving; 0 while opening galleries or draining.",
            1 if state.ready() else 0,
        )
        opened, to_open = state.opening()
        yield GaugeMetricFamily("faceid_galleries_to_open", "Galleries this process opens at start.", to_open)
        yield GaugeMetricFamily("faceid_galleries_opened", "Galleries opened so far at start.", opened)
        yield GaugeMetricFamily(
            "faceid_ready_time_seconds", "Unix time the server became ready (0: not yet).", state.ready_time()
        )
        calls, size = state.inflight()
        yield GaugeMetricFamily("faceid_inflight_calls", "Engine calls in progress.", calls)
        yield GaugeMetricFamily(
            "faceid_inflight_bytes", "Request bytes of the engine calls in progress.", size
        )
        yield from _gallery_gauges(self.readings())
        yield CounterMetricFamily(
            "faceid_gallery_readings_errors",
            "Scrapes whose gallery readings failed (the database, say): they showed the last good ones.",
            self.errors,
        )


def _gallery_gauges(readings: list[GalleryReading]) -> Iterable[Metric]:
    def family(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["gallery"])

    faces = family("faceid_gallery_faces", "Faces the gallery's index holds.")
    identities = family("faceid_gallery_identities", "Identities in the gallery (recounted every 10 s).")
    index_bytes = family("faceid_gallery_index_bytes", "RAM the gallery's index takes.")
    gpu_bytes = family("faceid_gallery_index_gpu_bytes", "GPU memory the gallery's index replica takes.")
    age = family("faceid_gallery_snapshot_age_seconds", "Seconds since the gallery's snapshot was written.")
    unsaved = family(
        "faceid_gallery_unsaved_changes",
        "Changes applied since the gallery's snapshot, other processes' too (from the process writing it).",
    )
    behind = family(
        "faceid_gallery_changes_behind", "Changes other processes logged that this one has not applied."
    )
    kind = GaugeMetricFamily(
        "faceid_gallery_index_info",
        "1 per gallery: its index kind (exact, ivf_pq), whether it is training, where it searches.",
        labels=["gallery", "kind", "training", "device"],
    )
    for r in readings:
        faces.add_metric([r.name], r.faces)
        identities.add_metric([r.name], r.identities)
        index_bytes.add_metric([r.name], r.index.memory_bytes)
        gpu_bytes.add_metric([r.name], r.index.gpu_memory_bytes)
        if r.snapshot_age is not None:
            age.add_metric([r.name], r.snapshot_age)
        if r.unsaved_changes is not None:
            unsaved.add_metric([r.name], r.unsaved_changes)
        behind.add_metric([r.name], r.changes_behind)
        kind.add_metric([r.name, r.index.kind, str(r.index.training).lower(), r.index.device], 1)
    yield from (faces, identities, index_bytes, gpu_bytes, age, unsaved, behind, kind)


# ---- the calls -----------------------------------------------------------------------------------
def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _code(context: Any, default: grpc.StatusCode) -> str:
    code = context.code()
    if isinstance(code, int):
        code = _CODES.get(code, grpc.StatusCode.UNKNOWN)
    return str((code or default).name)


class MetricsInterceptor(HandlerInterceptor):
    """Counts and times every call, the gate's refusals included (it sits outside the gate).

    ``kinds``: each method's kind as its .proto says (``/pkg.Service/Method`` → grpc_type); the
    gate serves unary methods as request streams, so the handler's own flags would say otherwise.
    """

    def __init__(self, metrics: Metrics, kinds: dict[str, str]) -> None:
        self.metrics = metrics
        self.kinds = kinds

    def intercept(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        service, _, method = details.method.lstrip("/").rpartition("/")
        labels = (self.kinds.get(details.method) or _kind(handler), service, method)
        return _timed_handler(handler, self.metrics, labels)


def _timed_handler(
    handler: grpc.RpcMethodHandler, metrics: Metrics, labels: tuple[str, str, str]
) -> grpc.RpcMethodHandler:
    """``handler`` with its calls counted and timed under ``labels``."""
    started, handling = metrics.started.labels(*labels), metrics.handling.labels(*labels)

    @contextmanager
    def counted(context: Any) -> Iterator[None]:
        started.inc()
        began = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            ended(context, began, exc)
            raise
        ended(context, began, None)

    def ended(context: Any, began: float, error: BaseException | None) -> None:
        remaining = context.time_remaining()
        if isinstance(error, asyncio.CancelledError):
            # gRPC cancels the handler both when the client cancels and when the deadline passes.
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        elif error is not None and not isinstance(error, grpc.aio.AbortError):
            code = "UNKNOWN"  # what gRPC answers for an exception a handler let out
        else:
            code = _code(context, grpc.StatusCode.OK)
            if code == "OK" and remaining is not None and remaining <= 0:
                code = "DEADLINE_EXCEEDED"  # answered too late: the client has given up on it
        metrics.handled.labels(*labels, code).inc()
        handling.observe(time.perf_counter() - began)

    serve = behaviour(handler)

    async def unary(request: Any, context: Any) -> Any:
        with counted(context):
            result = serve(request, context)
            return await result if inspect.isawaitable(result) else result

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        with counted(context):
            responses = serve(request, context)
            if inspect.isawaitable(responses):  # writes its answers itself (health's Watch)
                await responses
            elif hasattr(responses, "__aiter__"):
                async for response in responses:
                    yield response
            else:
                for response in responses:
                    yield response

    return rebuilt(handler, streaming if handler.response_streaming else unary)


def method_kinds(*services: Any) -> dict[str, str]:
    """``/pkg.Service/Method`` → grpc_type, for each method of the given service descriptors."""
    kinds = {}
    for service in services:
        for m in service.methods:
            kind = (
                ("bidi_stream" if m.server_streaming else "client_stream")
                if m.client_streaming
                else ("server_stream" if m.server_streaming else "unary")
            )
            kinds[f"/{service.full_name}/{m.name}"] = kind
    return kinds
