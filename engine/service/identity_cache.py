"""Identity rows by row id, in memory: what identify's results are filled from."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import datetime

from faceid.engine.domain.records import Identity

#: An identity row as the cache keeps it: (row id, gallery id, external id, display name,
#: attributes as JSON text, created, updated).
Packed = tuple[int, int, str, str, str, datetime, datetime]


def pack(i: Identity) -> Packed:
    return (
        i.id,
        i.gallery_id,
        i.external_id,
        i.display_name,
        json.dumps(i.attributes) if i.attributes else "",  # most have none: no JSON work
        i.created_at,
        i.updated_at,
    )


class IdentityCache:
    """Identity rows by row id, least recently used out first; writers invalidate under the gallery lock.

    Rows are kept as tuples of strings, numbers and datetimes, which Python's cycle collector stops
    tracking: a million cached Identity objects (each with its attributes dict) made every full
    collection stop the server for half a second.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._rows: dict[int, Packed] = {}  # in use order (a plain dict: the collector skims it)
        self._lock = threading.Lock()

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

    def put_many(self, rows: dict[int, Identity]) -> None:
        packed = {i: pack(r) for i, r in rows.items()}
        with self._lock:
            self._rows.update(packed)
            for old in list(itertools.islice(self._rows, max(0, len(self._rows) - self.capacity))):
                del self._rows[old]  # the least recently used

    def discard(self, identity_id: int | None) -> None:
        with self._lock:
            self._rows.pop(identity_id if identity_id is not None else -1, None)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
