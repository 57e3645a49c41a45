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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from faceid.engine.domain.errors import InvalidInputError

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


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


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
