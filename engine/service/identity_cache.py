"""Identity rows by row id, in memory: what identify's results are filled from."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterable

from faceid.engine.domain.limits import read_stored_json
from faceid.engine.domain.records import Identity

#: What a match shows of its identity: (external id, display name, attributes as JSON text, ""
#: for none).  Only these: a search reads nothing else from the cache.
Packed = tuple[str, str, str]


def pack(i: Identity) -> Packed:
    return (i.external_id, i.display_name, json.dumps(i.attributes) if i.attributes else "")


def pack_stored(external_id: str, display_name: str, attributes: str | None) -> Packed:
    """An identity row read as text (the warm-up: no JSON decoding, no timestamps).  Most rows
    have no attributes and cost nothing more; the others are read as the database's deserializer
    reads them (``limits.read_stored_json``: a row nested too deep reads as empty) and written
    again, so the cache only ever holds JSON this process wrote."""
    if not attributes or attributes in ("{}", "null"):
        return (external_id, display_name, "")
    value = read_stored_json(attributes)
    return (external_id, display_name, json.dumps(value) if value else "")


class IdentityCache:
    """Identity rows by row id, least recently used out first; writers invalidate under the gallery lock.

    Rows are kept as tuples of strings, which Python's cycle collector stops tracking: a million
    cached Identity objects (each with its attributes dict) made every full collection stop the
    server for half a second.

    **Fills race with invalidations.**  A reader that missed reads the row from the database and
    puts it here; a writer that changed the row meanwhile may have discarded it before the put,
    which would then keep the old row for good.  So every discard or clear moves an epoch, a filler
    takes the epoch (:meth:`epoch`) before its read, and a put made with an older epoch is
    dropped: the row is read again on the next miss.  The background warm-up relies on the same.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._rows: dict[int, Packed] = {}  # in use order (a plain dict: the collector skims it)
        self._lock = threading.Lock()
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._rows)

    def epoch(self) -> int:
        """Take before reading rows from the database; hand to :meth:`put_many`."""
        return self._epoch

    def get_many(self, ids: set[int]) -> tuple[dict[int, Packed], set[int]]:
        """The cached rows of ``ids`` (packed: a search reads three fields, and unpacking every
        row would cost it more than its own Python) and the ids not cached."""
        found: dict[int, Packed] = {}
        with self._lock:
            for i in ids:
                row = self._rows.pop(i, None)
                if row is not None:
                    self._rows[i] = row  # now the most recently used
                    found[i] = row
        return found, ids - found.keys()

    def put_many(self, rows: dict[int, Identity], epoch: int | None = None) -> None:
        """Cache rows read from the database after ``epoch`` was taken (None: rows the caller
        itself has just written, under the gallery's lock)."""
        self.put_packed(((i, pack(r)) for i, r in rows.items()), epoch)

    def put_packed(
        self, rows: Iterable[tuple[int, Packed]], epoch: int | None = None, *, fill: bool = False
    ) -> int:
        """Cache packed rows; returns how many were kept.  ``fill``: only into free room, not
        pushing out rows in use (the warm-up)."""
        packed = dict(rows)
        with self._lock:
            if epoch is not None and epoch != self._epoch:
                return 0  # a write came between the caller's read and now
            if fill:
                room = max(0, self.capacity - len(self._rows))
                packed = dict(itertools.islice(packed.items(), room))
            self._rows.update(packed)
            for old in list(itertools.islice(self._rows, max(0, len(self._rows) - self.capacity))):
                del self._rows[old]  # the least recently used
        return len(packed)

    def discard(self, identity_id: int | None) -> None:
        with self._lock:
            self._epoch += 1
            self._rows.pop(identity_id if identity_id is not None else -1, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._rows.clear()
