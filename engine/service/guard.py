"""Keeping a write from committing once its call can no longer be answered as a success."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from faceid.engine.domain.errors import DeadlineExceededError

#: Seconds of a call's deadline kept for what follows a COMMIT (the index, the answer): a write
#: that would start later is not started; plus this much per item of a batch.
COMMIT_MARGIN = 0.05
COMMIT_MARGIN_PER_ITEM = 50e-6


class CommitGuard:
    """:meth:`check` (the service's ``Proceed``) runs in the worker thread under the gallery's
    lock, before the write's transaction starts and again right before its COMMIT, and raises
    :class:`DeadlineExceededError` (the transaction rolls back, nothing is written) once the call
    was cancelled (the caller went away, or the transport cancelled the handler at the deadline),
    or when less than ``COMMIT_MARGIN`` (+ ``COMMIT_MARGIN_PER_ITEM`` per item) is left before
    the deadline: what follows a COMMIT (the index update, the answer) must fit in that margin.  A
    COMMIT once sent is not stopped; the margin is what keeps its answer inside the deadline.
    """

    def __init__(self, time_remaining: float | None, items: int = 1) -> None:
        margin = COMMIT_MARGIN + COMMIT_MARGIN_PER_ITEM * items
        self.deadline = None if time_remaining is None else time.monotonic() + time_remaining - margin
        self.cancelled = threading.Event()

    @classmethod
    @contextlib.contextmanager
    def of(cls, time_remaining: float | None, items: int = 1) -> Iterator[CommitGuard]:
        """A guard for a call with ``time_remaining`` seconds left (None: no deadline), cancelled
        when the task that awaits the write is."""
        guard = cls(time_remaining, items)
        try:
            yield guard
        except asyncio.CancelledError:
            guard.cancelled.set()
            raise

    def check(self) -> None:
        if self.cancelled.is_set():
            raise DeadlineExceededError("the call was cancelled before its enrolment was committed")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceededError(
                "too little of the call's deadline was left to commit the enrolment, so nothing was "
                "written: send it again with a longer deadline (or fewer items)"
            )
