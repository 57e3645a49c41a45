"""Times through the API are RFC 3339 in UTC (offset +00:00), on SQLite and PostgreSQL, also after a
restart: a real server process, the real client, a real database."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from faceid.client.client import FaceIdClient
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.server.app import spawn

from .helpers import fresh_postgres_database, postgres_unavailable
from .helpers import unit_values as unit


@pytest.fixture(params=["sqlite", "postgresql"])
def database_flags(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Server flags for the store: SQLite in the data directory, or a fresh PostgreSQL database whose
    sessions run in a zone far from UTC (+05:30), as a server configured with local time would."""
    if request.param == "sqlite":
        yield []
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_database("?options=-ctimezone%3DAsia/Kolkata") as url:
        yield ["--database-url", url]


def utc(text: str, since: datetime) -> datetime:
    """The time, checked: RFC 3339 with the offset +00:00, and not before ``since`` (nor in the future)."""
    t = datetime.fromisoformat(text)
    assert t.tzinfo is not None, f"{text!r} carries no offset"
    assert t.utcoffset() == timedelta(0), f"{text!r} is not in UTC"
    assert since - timedelta(seconds=1) <= t <= datetime.now(UTC) + timedelta(seconds=1), text
    return t


def times(c: FaceIdClient, since: datetime) -> tuple[datetime, datetime, datetime]:
    """The gallery's create_time and the identity's create_time and update_time, checked."""
    gallery = c.stub.GetGallery(pb.GetGalleryRequest(name="galleries/g"), metadata=c.metadata, timeout=30)
    identity = c.get_identity("g", "ann")
    return utc(gallery.create_time, since), utc(identity.create_time, since), utc(identity.update_time, since)


def test_gallery_and_identity_times_are_utc_with_an_offset_also_after_a_restart(
    tmp_path: Path, database_flags: list[str]
) -> None:
    since = datetime.now(UTC)
    proc, address, key = spawn(tmp_path / "data", *database_flags)
    try:
        with FaceIdClient(address, timeout=60, api_key=key) as c:
            created = c.stub.CreateGallery(pb.CreateGalleryRequest(gallery_id="g"), metadata=c.metadata)
            utc(created.create_time, since)
            c.enroll("g", "ann", embedding=unit(1))
            c.update_identity("g", "ann", display_name="Ann")
            before = times(c, since)
            assert before[2] >= before[1]  # updated after it was created
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    proc, address, _ = spawn(tmp_path / "data", *database_flags)
    try:
        with FaceIdClient(address, timeout=60, api_key=key) as c:
            assert times(c, since) == before  # the same instants, read back from the database
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
