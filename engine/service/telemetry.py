"""What the engine reports about its own work, for whoever watches it (the server's Prometheus
metrics, :mod:`faceid.server.metrics`).

The engine imports no metrics library: it calls a :class:`Telemetry` (a few plain methods, called
from the event loop and from worker threads, so an implementation must be thread-safe), and reads
its state on request (:meth:`~faceid.engine.service.Engine.readings`).  The default,
:class:`Unobserved`, records nothing.

Stages (``stage``'s names): ``decode`` (photos decoded), ``detect_hog`` / ``detect_cnn`` (photo
scans by each detector; a CNN call scans a batch), ``embed`` (faces through the network, per
network batch), ``search`` (probes searched, per index batch).  Items over seconds is each stage's
throughput while it works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Telemetry(Protocol):
    def batch(self, batcher: str, size: int, waits: Sequence[float]) -> None:
        """A micro-batch of ``batcher`` ("search", "embed", "detect") started with ``size`` items;
        ``waits``: how long each call in it waited to be batched (seconds)."""

    def stage(self, stage: str, items: int, seconds: float) -> None:
        """A stage (module docstring) handled ``items`` in ``seconds`` of one worker's time."""


class Unobserved:
    """A :class:`Telemetry` that records nothing (an engine nobody watches)."""

    def batch(self, batcher: str, size: int, waits: Sequence[float]) -> None:
        return None

    def stage(self, stage: str, items: int, seconds: float) -> None:
        return None
