"""The identity cache: a fill read before a write changed the row is not kept, the warm-up only
takes free room, and stored attributes are read as the database's deserializer reads them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from faceid.engine.domain.limits import MAX_STORED_DEPTH
from faceid.engine.domain.records import Identity
from faceid.engine.service.identity_cache import IdentityCache, pack_stored


def identity(row: int, name: str) -> Identity:
    now = datetime.now(UTC)
    return Identity(row, 1, f"p{row}", name, {"n": row}, now, now)


def test_a_fill_read_before_a_write_discarded_the_row_is_not_kept() -> None:
    cache = IdentityCache(10)
    epoch = cache.epoch()  # a search missed row 1 and reads it from the database ...
    cache.discard(1)  # ... while an update of row 1 commits and invalidates it
    cache.put_many({1: identity(1, "old name")}, epoch)
    assert cache.get_many({1}) == ({}, {1})
    cache.put_many({1: identity(1, "new name")}, cache.epoch())
    found, missing = cache.get_many({1})
    assert found[1] == ("p1", "new name", '{"n": 1}') and not missing


def test_the_warm_up_fills_only_free_room_and_keeps_the_rows_in_use() -> None:
    cache = IdentityCache(3)
    cache.put_many({1: identity(1, "a"), 2: identity(2, "b")})
    kept = cache.put_packed(((r, (f"w{r}", "", "")) for r in (10, 11, 12)), cache.epoch(), fill=True)
    assert kept == 1 and len(cache) == 3
    found, _ = cache.get_many({1, 2, 10, 11})
    assert set(found) == {1, 2, 10}


def test_stored_attributes_are_read_as_text_and_those_nested_too_deep_read_as_none() -> None:
    assert pack_stored("p", "P", "{}") == ("p", "P", "")
    assert pack_stored("p", "P", None) == ("p", "P", "")
    assert pack_stored("p", "P", '{"a": [1, 2]}') == ("p", "P", '{"a": [1, 2]}')
    deep = '{"a": ' * (MAX_STORED_DEPTH + 5) + "1" + "}" * (MAX_STORED_DEPTH + 5)
    assert pack_stored("p", "P", deep) == ("p", "P", "")
    assert json.loads(pack_stored("p", "P", '{"b":\n 2}')[2]) == {"b": 2}
