"""API keys: who may call, with which role, on which galleries.

A key is ``faceid_<key id>_<secret>``.  The key id is public (it names the key in
listings and logs); the secret is 256 random bits and is stored only as its
SHA-256 digest, so a copy of the database gives no usable key.  A fast digest
is the right tool here: the secret is random, not a password, so there is
nothing to brute-force.  The full key is shown once, when it is created.

Roles nest: a reader identifies, verifies, gets and lists; a writer also
enrols, updates and deletes; an admin also creates and deletes galleries and
manages keys.  A key is scoped to a list of galleries, or to all of them.

:class:`KeyRing` holds every key in memory and answers :meth:`KeyRing.authenticate`
without touching the database (it runs for every call, on the server's event
loop); :meth:`KeyRing.refresh` reloads the keys, so that keys created or revoked
by ``faceid keys`` in another process take effect within the refresh period.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from faceid.engine.errors import InvalidInputError, NotFoundError
from faceid.engine.store import Base, utcnow

PREFIX = "faceid"
ALL_GALLERIES = "*"


class Role(enum.IntEnum):
    """Each role may do everything the ones below it may."""

    READER = 1
    WRITER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise InvalidInputError(f"role must be reader, writer or admin; got {name!r}") from None


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    #: Gallery names the key may reach, or ``["*"]`` for every gallery.
    galleries: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never its secret)."""

    key_id: str
    role: Role
    galleries: tuple[str, ...]  # ("*",) = every gallery
    description: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def all_galleries(self) -> bool:
        return ALL_GALLERIES in self.galleries

    def may_reach(self, gallery: str) -> bool:
        return self.all_galleries or gallery in self.galleries


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``token`` is the whole key, shown this once."""

    key: ApiKey
    token: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.key_id,
        Role[row.role.upper()],
        tuple(row.galleries),
        row.description,
        row.created_at,
        row.revoked_at,
    )


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore:
    """API keys in the store's database (table ``api_keys``); every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _session(self) -> Session:
        return self._sessions()

    def create(self, role: Role, galleries: Iterable[str], description: str = "") -> NewKey:
        scope = sorted(set(galleries))
        if not scope:
            raise InvalidInputError("a key needs at least one gallery, or '*' for every gallery")
        if ALL_GALLERIES in scope:
            scope = [ALL_GALLERIES]
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._session() as s, s.begin():
            row = ApiKeyRow(
                key_id=key_id,
                secret_sha256=_digest(secret),
                role=role.name.lower(),
                galleries=scope,
                description=description[:256],
            )
            s.add(row)
            s.flush()
            return NewKey(_record(row), f"{PREFIX}_{key_id}_{secret}")

    def all(self, include_revoked: bool = False) -> list[ApiKey]:
        with self._session() as s:
            query = select(ApiKeyRow).order_by(ApiKeyRow.id)
            if not include_revoked:
                query = query.where(ApiKeyRow.revoked_at.is_(None))
            return [_record(r) for r in s.scalars(query)]

    def revoke(self, key_id: str) -> ApiKey:
        with self._session() as s, s.begin():
            done = s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.key_id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id)).one_or_none()
            if row is None or not getattr(done, "rowcount", 0):
                raise NotFoundError(f"no active key {key_id!r}; `faceid keys list` shows the keys")
            return _record(row)

    def any_created(self) -> bool:
        """Whether a key was ever created here (revoked ones count): an empty store gets a first key."""
        with self._session() as s:
            return s.scalars(select(ApiKeyRow.id).limit(1)).first() is not None

    def digests(self) -> list[tuple[ApiKey, str]]:
        """Every active key with its secret's digest (for :class:`KeyRing`)."""
        with self._session() as s:
            rows = s.scalars(select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None)))
            return [(_record(r), r.secret_sha256) for r in rows]


class KeyRing:
    """The active keys in memory, checked in constant time; reload with :meth:`refresh`."""

    _UNKNOWN = _digest("no such key")  # compared against when the key id is unknown, so time is the same

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
        ok = hmac.compare_digest(_digest(secret), expected)
        return entry[0] if ok and entry else None


def describe(key: ApiKey) -> dict[str, Any]:
    """A key's record as plain values (the CLI's JSON)."""
    return {
        "key_id": key.key_id,
        "role": key.role.name.lower(),
        "galleries": list(key.galleries),
        "description": key.description,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def parse_scope(galleries: Sequence[str]) -> list[str]:
    """Gallery names given on a command line or in a request, checked."""
    scope = [g.strip() for g in galleries if g.strip()]
    for g in scope:
        if "/" in g or len(g) > 128:
            raise InvalidInputError(f"not a gallery name: {g!r}")
    return scope
