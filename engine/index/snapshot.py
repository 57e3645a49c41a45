"""The snapshot container: a header and sections, checksummed, written to a temporary file, fsynced
and renamed into place; a file whose magic, checksum or shape is wrong raises :class:`SnapshotError`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from faceid.engine.index.base import SnapshotError

_MAGIC = b"FACEIDX\x01"


def write_snapshot(path: Path, header: dict[str, Any], sections: list[bytes]) -> None:
    """``MAGIC | header length | header JSON | sections``; the header carries each section's
    length and the SHA-256 of all of them.  Written to a temporary file, fsynced, renamed."""
    digest = hashlib.sha256()
    for s in sections:
        digest.update(s)
    header = {**header, "sections": [len(s) for s in sections], "sha256": digest.hexdigest()}
    head = json.dumps(header, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(_MAGIC + len(head).to_bytes(8, "little") + head)
        for s in sections:
            f.write(s)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_snapshot(path: Path) -> tuple[dict[str, Any], list[memoryview]]:
    """The header and the sections, as views into one read of the file (no copy per section:
    a 10M-face snapshot is 2 GiB)."""
    try:
        data = memoryview(path.read_bytes())
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot ({exc})") from None
    if data[: len(_MAGIC)] != _MAGIC:
        raise SnapshotError(f"{path}: not a faceid index snapshot")
    at = len(_MAGIC) + 8
    try:
        head_len = int.from_bytes(data[len(_MAGIC) : at], "little")
        header = json.loads(bytes(data[at : at + head_len]))
        sizes = [int(s) for s in header["sections"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot header ({exc})") from None
    at += head_len
    if any(s < 0 for s in sizes) or at + sum(sizes) != len(data):
        raise SnapshotError(f"{path}: snapshot is truncated or has trailing bytes")
    sections = []
    for size in sizes:
        sections.append(data[at : at + size])
        at += size
    digest = hashlib.sha256()  # (hashlib lets other threads run while it hashes a large buffer)
    for section in sections:
        digest.update(section)
    if digest.hexdigest() != header.get("sha256"):
        raise SnapshotError(f"{path}: snapshot checksum mismatch (corrupt)")
    return header, sections
