"""Who is calling: every active API key in memory, checked in constant time without touching the
database (it runs for every call, on the server's event loop); :meth:`KeyRing.refresh` reloads
them, so that keys created or revoked by ``faceid keys`` in another process take effect within
the refresh period."""

from __future__ import annotations

import hmac
import threading

from faceid.engine.config import EngineConfig
from faceid.engine.domain.access import ApiKey, digest, split_token
from faceid.engine.store import KeyStore, Store


class KeyRing:
    """The active keys in memory, checked in constant time; reload with :meth:`refresh`."""

    _UNKNOWN = digest("no such key")  # compared against when the key id is unknown, so time is the same

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._by_id: dict[str, tuple[ApiKey, str]] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        loaded = {k.key_id: (k, digest) for k, digest in self.keys.digests()}
        with self._lock:
            self._by_id = loaded

    def authenticate(self, token: str) -> ApiKey | None:
        """The key's record when ``token`` is an active key, else None."""
        parts = split_token(token)
        key_id, secret = parts if parts else ("", token)
        entry = self._by_id.get(key_id)
        expected = entry[1] if entry else self._UNKNOWN
        ok = hmac.compare_digest(digest(secret), expected)
        return entry[0] if ok and entry else None


def key_ring(store: Store) -> KeyRing:
    """The key ring of ``store``'s API keys."""
    return KeyRing(KeyStore(store.engine))


def key_store(config: EngineConfig) -> KeyStore:
    """The store's API keys, to create, list and revoke (``faceid keys``); migrates the schema first."""
    store = Store.from_url(config.url())
    store.migrate()
    return KeyStore(store.engine)


class StoreClaim:
    """One server's claim on its database (:meth:`Store.claim`): a second server on the same
    PostgreSQL database is refused at start.  SQLite is claimed by the data directory's lock."""

    def __init__(self, config: EngineConfig) -> None:
        self._store = Store.from_url(config.url())

    def acquire(self) -> bool:
        return bool(self._store.claim())

    def release(self) -> None:
        self._store.release()
