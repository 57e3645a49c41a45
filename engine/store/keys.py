"""API keys in the store's database (table ``api_keys``): only the SHA-256 digest of each secret
is stored (:mod:`faceid.engine.domain.access` says why)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import JSON, DateTime, Integer, String, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from faceid.engine.domain.access import ALL_GALLERIES, PREFIX, ApiKey, NewKey, Role, digest
from faceid.engine.domain.errors import InvalidInputError, NotFoundError
from faceid.engine.store.schema import Base, utcnow


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


def _record(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.key_id,
        Role[row.role.upper()],
        tuple(row.galleries),
        row.description,
        row.created_at,
        row.revoked_at,
    )


class KeyStore:
    """API keys in the store's database (table ``api_keys``); every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def close(self) -> None:
        """Release the database connections (of a key store opened on its own, as by ``faceid keys``)."""
        self._engine.dispose()

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
                secret_sha256=digest(secret),
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
