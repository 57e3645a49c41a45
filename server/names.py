"""Resource names of the API (``galleries/{gallery}/identities/{identity}``, …), parsed and made."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from faceid.engine.domain.errors import InvalidInputError


def gallery_of(name: str, field: str = "name") -> str:
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "galleries" or not parts[1]:
        raise InvalidInputError(f"{field} must be 'galleries/{{gallery}}'; got {name!r}")
    return parts[1]


def identity_of(name: str) -> tuple[str, str]:
    parts = name.split("/", 3)
    if len(parts) != 4 or parts[0] != "galleries" or parts[2] != "identities" or not parts[1] or not parts[3]:
        raise InvalidInputError(f"name must be 'galleries/{{gallery}}/identities/{{identity}}'; got {name!r}")
    return parts[1], unquote(parts[3])


def face_of(name: str) -> tuple[str, int]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "galleries" or parts[2] != "faces" or not parts[3]:
        raise InvalidInputError(f"name must be 'galleries/{{gallery}}/faces/{{face_id}}'; got {name!r}")
    digits = parts[3]
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19 and 0 < int(digits) < 2**63):
        raise InvalidInputError(f"face_id must be a whole number from 1 to 2^63 - 1; got {digits!r}")
    return parts[1], int(digits)


def clustering_of(name: str, field: str = "name") -> tuple[str, int]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "galleries" or parts[2] != "clusterings" or not parts[1]:
        raise InvalidInputError(
            f"{field} must be 'galleries/{{gallery}}/clusterings/{{id}}' (a StartClustering answer's name); "
            f"got {name!r}"
        )
    digits = parts[3]
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19 and 0 < int(digits) < 2**63):
        raise InvalidInputError(f"a clustering id is a whole number from 1 to 2^63 - 1; got {digits!r}")
    return parts[1], int(digits)


def cluster_of(name: str) -> tuple[str, int, int]:
    """(gallery, run id, rank) of "galleries/{gallery}/clusterings/{id}/clusters/{rank}"."""
    head, sep, rank = name.rpartition("/clusters/")
    if not sep or not (rank.isascii() and rank.isdigit() and len(rank) <= 9 and int(rank) >= 1):
        raise InvalidInputError(
            f"name must be 'galleries/{{gallery}}/clusterings/{{id}}/clusters/{{rank}}' (a GalleryCluster's "
            f"name; ranks start at 1); got {name!r}"
        )
    gallery, run_id = clustering_of(head)
    return gallery, run_id, int(rank)


def clustering_name(gallery: str, run_id: int) -> str:
    return f"galleries/{gallery}/clusterings/{run_id}"


def identity_name(gallery: str, external_id: str) -> str:
    return f"galleries/{gallery}/identities/{_escaped(external_id)}"


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _escaped(external_id: str) -> str:
    """``quote(external_id, safe="")``, without its cost for the usual id that needs no escape
    (an identify answer names up to 10,240 identities: quote was a fifth of IdentifyBatch's time)."""
    return external_id if _UNRESERVED.fullmatch(external_id) else quote(external_id, safe="")
