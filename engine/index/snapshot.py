"""The snapshot container: a header and sections, checksummed, written to a temporary file, fsynced
and renamed into place; a file whose magic, checksum or shape is wrong raises :class:`SnapshotError`."""

from __future__ import annotations

import hashlib
import io
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


def read_snapshot(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot ({exc})") from None
    buf = io.BytesIO(data)
    if buf.read(len(_MAGIC)) != _MAGIC:
        raise SnapshotError(f"{path}: not a faceid index snapshot")
    try:
        head_len = int.from_bytes(buf.read(8), "little")
        header = json.loads(buf.read(head_len))
        sizes = [int(s) for s in header["sections"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot header ({exc})") from None
    sections = [buf.read(s) for s in sizes]
    if [len(s) for s in sections] != sizes or buf.read(1):
        raise SnapshotError(f"{path}: snapshot is truncated or has trailing bytes")
    digest = hashlib.sha256()
    for s in sections:
        digest.update(s)
    if digest.hexdigest() != header.get("sha256"):
        raise SnapshotError(f"{path}: snapshot checksum mismatch (corrupt)")
    return header, sections
