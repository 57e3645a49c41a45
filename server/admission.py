"""Load shedding: calls beyond ``max_concurrent_rpcs`` or ``max_inflight_bytes`` are refused at
once with RESOURCE_EXHAUSTED and a retry hint that adapts to the overload (:class:`Backoff`);
:func:`rpc` applies it, and turns a unary method's domain errors into status codes."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from faceid.server.config import MIB, ServerConfig
from faceid.server.status import status_of

T = TypeVar("T")
#: Told of each refused call: (reason, the retry delay asked, ms).
Refused = Callable[[str, float], None]


class Backoff:
    """The retry delay asked of refused callers, adapted to the overload.

    Calls queue in gRPC core before the server can see them, and a refusal waits in that queue
    too; only callers that stay away keep it short.  Each quarter second with refusals multiplies
    the delay by 1.5 (up to ``max_ms``), each one without halves it (down to ``base_ms``): under
    sustained overload the callers asked to wait grow until the rest fit the server's capacity.
    """

    WINDOW = 0.25  # seconds

    def __init__(self, base_ms: float, max_ms: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_ms, self.max_ms, self.ms = base_ms, max(max_ms, base_ms), base_ms
        self._clock = clock
        self._window = clock()
        self._refusals = 0

    def refused(self) -> float:
        """Count a refusal; the delay (ms) to ask of its caller."""
        now = self._clock()
        windows = int((now - self._window) / self.WINDOW)
        if windows >= 1:
            if self._refusals:
                self.ms = min(self.ms * 1.5, self.max_ms)
                windows -= 1
            self.ms = max(self.ms * 0.5**windows, self.base_ms)
            self._window, self._refusals = now, 0
        self._refusals += 1
        return self.ms


class Admission:
    """Unary calls being served and their bytes (photos, mostly), bounded by ``max_concurrent_rpcs``
    and ``max_inflight_bytes``.  Counted on the event loop, not only by gRPC's own limiter."""

    def __init__(self, config: ServerConfig, refused: Refused | None = None) -> None:
        """``refused(reason, pushback_ms)`` hears of each refusal (the server's metrics)."""
        self.config = config
        self.inflight_calls = 0
        self.inflight_bytes = 0
        self.backoff = Backoff(config.overload_pushback_ms, config.overload_pushback_max_ms)
        self._refused = refused

    def refusal(self, size: int) -> tuple[str, str]:
        """Why a call of ``size`` bytes must be refused now: (reason, message), reason "calls" or
        "bytes"; ("", "") when it may go ahead."""
        if self.inflight_calls >= self.config.max_concurrent_rpcs:
            return "calls", (
                f"the server is at its limit of {self.inflight_calls} calls in progress; retry with backoff"
            )
        if self.inflight_bytes and self.inflight_bytes + size > self.config.max_inflight_bytes:
            return "bytes", (
                f"the server holds {self.inflight_bytes / MIB:.0f} MiB of requests in progress; retry later"
            )
        return "", ""

    def pushback(self, reason: str) -> tuple[tuple[str, str], ...]:
        """Trailing metadata for a call refused for ``reason``: when to retry (jittered ±50 %)."""
        ms = round(self.backoff.refused() * random.uniform(0.5, 1.5))
        if self._refused is not None:
            self._refused(reason, ms)
        return (("grpc-retry-pushback-ms", str(ms)),)


class Admitted(Protocol):
    admission: Admission


def rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn domain errors into status codes for a unary method."""

    @functools.wraps(method)
    async def wrapper(self: Admitted, request: Any, context: grpc.aio.ServicerContext) -> T:
        size = request.ByteSize()
        admission = self.admission
        reason, refusal = admission.refusal(size)
        if refusal:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, admission.pushback(reason))
        admission.inflight_bytes += size
        admission.inflight_calls += 1
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
            raise AssertionError("unreachable") from None  # abort raises
        finally:
            admission.inflight_bytes -= size
            admission.inflight_calls -= 1

    return wrapper
