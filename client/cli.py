"""The faceid command.

    faceid serve [--data-dir DIR] [--port N] [--config FILE]     run the server (embedded defaults)
                 [--set NAME=VALUE …]                             any setting of the tree
    faceid settings [--config FILE]                               every setting, its value and variable
    faceid galleries [create|delete NAME]                         list, create, delete galleries
    faceid enroll GALLERY PATH [--identity ID]                    a photo, or a folder IDENTITY/photo.jpg
                                                                  (a re-run adds only what is missing)
    faceid identify GALLERY PHOTO [--top-k N]
    faceid verify GALLERY PHOTO (--identity ID | --other PHOTO)
    faceid identities GALLERY [list|show ID|delete ID]
    faceid stats GALLERY
    faceid faces PHOTO…                                           the pipeline in this process, no server
    faceid keys create --gallery NAME --role reader|writer|admin  API keys (on the server's database)
    faceid keys list | revoke KEY_ID
    faceid bench [--spawn] [--workload …] [--concurrency …]       the load generator (benchmarks/load.py)

Output is for people; --json (before or after the command) prints JSON for scripts, and an
error as one JSON line on stderr.  The server address is --server or $FACEID_SERVER (default
127.0.0.1:50051); the API key is --api-key or $FACEID_API_KEY; --ca-file (and
--cert-file/--key-file for mutual TLS) make the connection TLS.

No traceback reaches a person: every failure is one line on stderr, saying what happened and
what to do, and one of the exit statuses listed at the end (FACEID_DEBUG=1 adds the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Top-level packages of the server extra (pyproject.toml): the client installs without them.
SERVER_PACKAGES = {"torch", "dlib", "PIL", "faiss", "sqlalchemy", "alembic", "face_recognition_models"}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

#: Exit statuses, by what went wrong (printed in ``faceid --help``; README "The command line").
EXIT_STATUSES = {
    0: "done",
    1: "failed (any other error: the message says why)",
    2: "wrong command line or settings (the message says which)",
    3: "not found (a gallery, an identity, a face, a file)",
    4: "no or wrong API key, or the key may not do that (--api-key or $FACEID_API_KEY); or a file "
    "or directory this user may not read",
    5: "the server cannot be reached, is starting, or did not answer in time (--server, --timeout)",
    6: "the server refused the input (a photo with no face, a bad name, …)",
    7: "already exists, or changed meanwhile (try again)",
    8: "the server is busy or a limit was reached (try again later)",
    70: "internal error (a bug: please report it with the command)",
    130: "interrupted (Ctrl-C)",
    141: "the output was closed (e.g. piped into head)",
}
#: gRPC status names to exit statuses (those not listed: 1).
EXIT_FOR_CODE = {
    "NOT_FOUND": 3,
    "UNAUTHENTICATED": 4,
    "PERMISSION_DENIED": 4,
    "UNAVAILABLE": 5,
    "DEADLINE_EXCEEDED": 5,
    "INVALID_ARGUMENT": 6,
    "FAILED_PRECONDITION": 6,
    "OUT_OF_RANGE": 6,
    "ALREADY_EXISTS": 7,
    "ABORTED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "INTERNAL": 70,
    "UNKNOWN": 70,
    "DATA_LOSS": 70,
}
#: The ``code`` of a JSON error line for a failure on this side (no server status): the gRPC
#: status name of the same kind, so that a script reads one vocabulary.
CODE_FOR_EXIT = {
    1: "UNKNOWN",
    2: "INVALID_ARGUMENT",
    3: "NOT_FOUND",
    4: "PERMISSION_DENIED",
    5: "UNAVAILABLE",
    6: "INVALID_ARGUMENT",
    7: "ALREADY_EXISTS",
    8: "RESOURCE_EXHAUSTED",
    70: "INTERNAL",
    130: "CANCELLED",
}


def _print_json(value: Any) -> None:
    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    print(json.dumps(value, default=default, indent=2))


def _client(args: argparse.Namespace) -> Any:
    from faceid.client.client import FaceIdClient, tls_credentials

    tls = args.ca_file or args.cert_file
    credentials = tls_credentials(args.ca_file, args.cert_file, args.key_file) if tls else None
    return FaceIdClient(args.server, timeout=args.timeout, credentials=credentials, api_key=args.api_key)


class CommandError(Exception):
    """A command's failure as a person reads it: one line, and its exit status (EXIT_STATUSES)."""

    def __init__(self, message: str, status: int = 1, code: str = "") -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


# ---- serve -----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from faceid.server.app import StartupError, configure_logging, serve_processes

    config = _load_config(
        "serve",
        args.config,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        database_url=args.database_url,
        log_level=args.log_level,
        auth=False if args.no_auth else None,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_client_ca_file=args.tls_client_ca,
        processes=args.processes,
        **_settings(args.set or []),
    )
    configure_logging(config.log_level)
    try:
        return serve_processes(config)
    except StartupError as exc:
        raise CommandError(str(exc)) from None


def _load_config(command: str, file: Path | None, **overrides: Any) -> Any:
    """The server's settings, or a :class:`CommandError` saying which setting is wrong (status 2)."""
    import tomllib

    from faceid.server.config import ServerConfig

    try:
        return ServerConfig.load(file, **overrides)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(str(exc), 2) from None
    except OSError as exc:
        raise CommandError(f"cannot read the settings file {file}: {exc.strerror}", 2) from None


def _settings(pairs: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` flags as settings (checked, with the rest, when the tree is built)."""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CommandError(f"--set takes NAME=VALUE (e.g. index.nprobe_min=32), not {pair!r}", 2)
        found[name.strip()] = value.strip()
    return found


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting ``faceid serve`` takes, with its value after the file, environment and defaults."""
    from faceid.server.config import settings

    config = _load_config("settings", args.config)
    rows = []
    for name, path in sorted(settings().items()):
        value: Any = config
        for part in path:
            value = getattr(value, part)
        rows.append({"name": name, "value": str(value), "env": "FACEID_" + name.upper().replace(".", "__")})
    if args.json:
        _print_json(rows)
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['value']:<24}  {r['env']}")
    return 0


# ---- bench -----------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    """The load generator against --server (with --api-key), or a spawned server with --spawn."""
    from faceid.benchmarks import load

    forwarded = list(args.load_args)
    if "--spawn" not in forwarded and "--server" not in forwarded:
        forwarded += ["--server", args.server]
    if args.api_key and "--api-key" not in forwarded:
        forwarded += ["--api-key", args.api_key]
    load.main(forwarded)
    return 0


# ---- keys ------------------------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace) -> int:
    """API keys, read and written on the server's database directly (works with the server up or
    down).  ``create`` makes the database where there is none yet (a key made before the first
    start); ``list`` and ``revoke`` say so instead."""
    from faceid.engine.domain.access import ALL_GALLERIES, Role, describe, parse_scope
    from faceid.engine.domain.errors import InvalidInputError
    from faceid.engine.service.access import key_store
    from faceid.engine.store import DatabaseError

    server = _load_config("keys", args.config, data_dir=args.data_dir, database_url=args.database_url)
    if not server.engine.database_url:
        _check_data_dir(server.data_dir, create=args.action == "create")
    try:
        keys = key_store(server.engine)
    except DatabaseError as exc:
        where = server.engine.database_url or str(server.data_dir / "faceid.db")
        raise CommandError(
            f"cannot open the server's database at {where} ({_first_line(exc)}); check --data-dir or "
            "--database-url, and that this user may read and write it"
        ) from None
    try:
        if args.action == "create":
            galleries = [ALL_GALLERIES] if args.all_galleries else parse_scope(args.gallery or [])
            if not galleries:
                raise InvalidInputError("give --gallery NAME (repeat it for several) or --all-galleries")
            new = keys.create(Role.parse(args.role), galleries, args.description)
            if args.json:
                _print_json({**describe(new.key), "api_key": new.token})
            else:
                scope = "every gallery" if new.key.all_galleries else ", ".join(new.key.galleries)
                print(f"created {args.role} key {new.key.key_id} for {scope}; shown once, keep it safe:")
                print(new.token)
        elif args.action == "revoke":
            if not args.key_id:
                raise InvalidInputError("give the key id to revoke (`faceid keys list` shows them)")
            revoked = keys.revoke(args.key_id)
            print(json.dumps(describe(revoked)) if args.json else f"revoked key {revoked.key_id}")
        else:
            listed = keys.all(include_revoked=args.all)
            if args.json:
                _print_json([describe(k) for k in listed])
            for k in [] if args.json else listed:
                state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
                print(
                    f"{k.key_id}  {k.role.name.lower():<6}  {','.join(k.galleries):<24} {state:<18} "
                    f"{k.description}"
                )
    except DatabaseError as exc:
        raise CommandError(
            f"the server's database failed ({_first_line(exc)}); try again, or check it"
        ) from None
    finally:
        keys.close()
    return 0


def _check_data_dir(data_dir: Path, create: bool) -> None:
    """A data directory ``faceid keys`` can use: its database there (or, to create a key, a
    directory it may make); else a :class:`CommandError` saying what to do."""
    database = data_dir / "faceid.db"
    try:
        exists = database.exists()
    except OSError:  # the directory may not be looked into
        raise CommandError(
            f"{data_dir}: permission denied; run as the user the server runs as, or give its --data-dir",
            4,
        ) from None
    if exists:
        if not os.access(database, os.R_OK | os.W_OK) or not os.access(data_dir, os.W_OK | os.X_OK):
            raise CommandError(f"{database}: permission denied; run as the user the server runs as", 4)
        return
    if not create:
        raise CommandError(
            f"no server database in {data_dir}: give the server's --data-dir (or --database-url); "
            "a new one is made by `faceid serve` or `faceid keys create`",
            3,
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise CommandError(f"{data_dir}: permission denied; run as the user the server runs as", 4)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- galleries and stats ---------------------------------------------------------------------
def cmd_galleries(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.action == "create":
            result: Any = c.create_gallery(args.name)
        elif args.action == "delete":
            c.delete_gallery(args.name)
            result = {"deleted": args.name}
        else:
            result = c.list_galleries()
    if args.json:
        _print_json(result)
    elif args.action == "list":
        for g in result:
            print(
                f"{g.name:<24} {g.identity_count:>9,} identities {g.face_count:>10,} faces  "
                f"index {g.index_kind}"
            )
        if not result:
            print("no galleries yet: faceid galleries create NAME")
    else:
        print(f"{args.action}d gallery {args.name}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as c:
        g = c.get_gallery(args.gallery)
    if args.json:
        _print_json(g)
    else:
        print(
            f"gallery {g.name}: model {g.model}\n  {g.identity_count:,} identities, {g.face_count:,} faces\n"
            f"  index {g.index_kind}{' (training)' if g.index_training else ''}, "
            f"{g.index_memory_bytes / 2**20:.1f} MiB; searches on {g.index_device}"
            + (
                f" ({g.index_gpu_memory_bytes / 2**20:.1f} MiB of GPU memory)"
                if g.index_gpu_memory_bytes
                else ""
            )
        )
    return 0


# ---- enrol -----------------------------------------------------------------------------------
def photos_by_identity(path: Path) -> Iterator[tuple[str, Path]]:
    """(identity, photo) for a folder laid out as IDENTITY/photo.jpg."""
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        for photo in sorted(folder.iterdir()):
            if photo.suffix.lower() in PHOTO_SUFFIXES:
                yield folder.name, photo


def cmd_enroll(args: argparse.Namespace) -> int:
    from faceid.client.client import enroll_request

    path: Path = args.path
    if path.is_file():
        items = [(args.identity or path.stem, path)]
    elif path.is_dir():
        items = list(photos_by_identity(path))
    else:
        raise CommandError(f"{path}: no such file or folder", 3)
    if not items:
        raise CommandError(f"{path}: no photos found (expected IDENTITY/photo.jpg inside)", 3)
    requests = (
        enroll_request(args.gallery, identity, photo.read_bytes(), all_faces=args.all_faces, face=args.face)
        for identity, photo in items
    )
    # Enrolment is idempotent per photo (the server compares each photo's SHA-256 with those the
    # identity holds): a run after an interrupted one enrols what is missing and reports the rest as
    # already enrolled, so every photo ends up enrolled once.
    counts = {"enrolled": [0, 0], "already enrolled": [0, 0]}  # status: [photos, faces]
    skipped: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    progress = None
    if not args.json:
        from tqdm import tqdm

        progress = tqdm(total=len(items), unit="photo", desc=f"enrolling into {args.gallery}")
    with _client(args) as c, _interrupted_enrolment(items, counts, progress):
        for result in c.bulk_enroll(requests):
            identity, photo = items[result.index]
            shown = f"{identity}/{photo.name}" if path.is_dir() else str(photo)
            face_ids = [f.face_id for f in result.faces]
            if result.error_code:
                status = "skipped"
                skipped.append(
                    {
                        "photo": str(photo),
                        "identity": identity,
                        "code": result.error_code,
                        "reason": result.error_message,
                    }
                )
            else:
                already = bool(result.faces) and all(f.already_enrolled for f in result.faces)
                status = "already enrolled" if already else "enrolled"
                counts[status][0] += 1
                counts[status][1] += len(result.faces)
                if progress:
                    faces = ", ".join(map(str, face_ids))
                    progress.write(f"{status:<16}  {shown}  (face {faces})", file=sys.stdout)
            row = {"photo": str(photo), "identity": identity, "status": status, "face_ids": face_ids}
            results.append(row)
            if progress:
                progress.update()
    if progress:
        progress.close()
    (photos_new, faces_new), (photos_old, faces_old) = counts["enrolled"], counts["already enrolled"]
    if args.json:
        _print_json(
            {
                "photos": len(items),
                "faces_enrolled": faces_new,
                "photos_enrolled": photos_new,
                "photos_already_enrolled": photos_old,
                "faces_already_enrolled": faces_old,
                "skipped": skipped,
                "results": results,
            }
        )
        return 0
    print(
        f"enrolled {faces_new} faces from {photos_new} of {len(items)} photos; "
        f"{photos_old} photos were already enrolled ({faces_old} faces)"
    )
    if skipped:
        print(f"skipped {len(skipped)}:")
        for s in skipped:
            print(f"  {s['photo']}: {s['reason']}")
    return 0


@contextlib.contextmanager
def _interrupted_enrolment(items: list[Any], counts: dict[str, list[int]], progress: Any) -> Iterator[None]:
    """Ctrl-C during an enrolment: one line saying how far it got and how to finish (status 130)."""
    try:
        yield
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        done = counts["enrolled"][0] + counts["already enrolled"][0]
        raise CommandError(
            f"interrupted after {done} of {len(items)} photos; run the same command again to enrol the "
            "rest (photos already enrolled are recognised, none is enrolled twice)",
            130,
        ) from None


# ---- identify / verify -----------------------------------------------------------------------
#: Probes per IdentifyBatch call of ``faceid identify`` over many: photos are large, embeddings small.
PHOTOS_PER_CALL = 32
EMBEDDINGS_PER_CALL = 1024


def _many_probes(path: Path) -> tuple[list[str], list[Any]] | None:
    """(labels, probes) when ``path`` names many probes: a folder of photos (searched through, in
    name order) or a ``.npy`` file of embeddings (one per row); None for a single photo."""
    if path.is_dir():
        photos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        return [str(p.relative_to(path)) for p in photos], photos
    if path.suffix.lower() == ".npy":
        import numpy as np

        vectors = np.load(path, allow_pickle=False)
        if vectors.ndim != 2:
            raise ValueError(
                f"{path}: expected a 2-D array of embeddings (one per row); got shape {vectors.shape}"
            )
        return [f"row {i}" for i in range(len(vectors))], list(vectors.astype(float).tolist())
    return None


def _identify_many(args: argparse.Namespace, labels: list[str], probes: list[Any]) -> int:
    """Every probe through IdentifyBatch, a progress bar on stderr, one row per face: CSV (``--out``
    FILE.csv, or stdout) or JSON with ``--json``."""
    from tqdm import tqdm

    photos = bool(probes) and isinstance(probes[0], Path)
    per_call = PHOTOS_PER_CALL if photos else EMBEDDINGS_PER_CALL
    rows: list[dict[str, Any]] = []
    with (
        _client(args) as c,
        tqdm(total=len(probes), unit="probe", desc=f"identifying in {args.gallery}") as bar,
    ):
        for start in range(0, len(probes), per_call):
            chunk = probes[start : start + per_call]
            sent = [p.read_bytes() for p in chunk] if photos else chunk
            for r in c.identify_batch(args.gallery, sent, top_k=args.top_k, face=args.face):
                label = labels[start + r.index]
                if r.error_code:
                    rows.append({"probe": label, "face": "", "error": f"{r.error_code}: {r.error_message}"})
                elif not r.faces:
                    rows.append({"probe": label, "face": "", "error": "no face found"})
                for n, f in enumerate(r.faces):
                    best = f.matches[0] if f.matches else None
                    rows.append(
                        {
                            "probe": label,
                            "face": n,
                            "identity_id": best.identity_id if best else "",
                            "distance": round(best.distance, 4) if best else "",
                            "is_match": best.is_match if best else False,
                            "error": "",
                        }
                    )
            bar.update(len(chunk))
    if args.json:
        _print_json(rows)
        return 0
    import csv

    fields = ["probe", "face", "identity_id", "distance", "is_match", "error"]
    with args.out.open("w", newline="") if args.out else contextlib.nullcontext(sys.stdout) as out:
        writer = csv.DictWriter(out, fields)
        writer.writeheader()
        writer.writerows(rows)
    matched = sum(1 for r in rows if r.get("is_match"))
    print(f"{len(probes)} probes, {len(rows)} rows, {matched} matches", file=sys.stderr)
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    many = _many_probes(args.photo)
    if many is not None:
        return _identify_many(args, *many)
    with _client(args) as c:
        faces = c.identify(args.gallery, photo=args.photo.read_bytes(), top_k=args.top_k, face=args.face)
    if args.json:
        _print_json(faces)
        return 0
    if not faces:
        print("no face found in the photo")
    for i, f in enumerate(faces):
        b = f.box
        where = f" at ({b.left:.0f}, {b.top:.0f})–({b.right:.0f}, {b.bottom:.0f})" if b else ""
        print(f"face {i}{where}: {_verdict(f)}")
        for m in f.matches:
            mark = "MATCH" if m.is_match else "     "
            name = f" ({m.display_name})" if m.display_name else ""
            print(f"  {mark} {m.identity_id}{name}  distance {m.distance:.3f}  similarity {m.similarity:.3f}")
    return 0


def _verdict(f: Any) -> str:
    """What a face's matches say, in words: who it is, or plainly that nobody enrolled is a match."""
    if not f.matches:
        return "no match: the gallery is empty"
    best = f.matches[0]
    threshold = f" the threshold {f.threshold:.3f}" if f.threshold else " the threshold"
    if best.is_match:
        return f"{best.identity_id} (distance {best.distance:.3f}, below{threshold})"
    return f"no match: the nearest is {best.identity_id} at distance {best.distance:.3f}, above{threshold}"


def _follow(c: Any, gallery: str, run: Any) -> Any:
    """Poll a clustering run to its end, a progress bar per phase on stderr."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def show(r: Any) -> None:
        if r.phase in ("reading", "neighbours", "merging") and r.phase not in bars:
            for bar in bars.values():
                bar.close()
            total = r.total if r.phase != "merging" else None
            unit = "face" if r.phase != "merging" else "round"
            bars[r.phase] = tqdm(total=total, unit=unit, desc=f"clustering {gallery}: {r.phase}")
        bar = bars.get(r.phase)
        if bar is not None:
            bar.update(max(0, r.done - bar.n))

    try:
        return c.wait_clustering(gallery, run.run_id, poll=0.5, progress=show)
    finally:
        for bar in bars.values():
            bar.close()


def cmd_cluster(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.run:
            run = c.get_clustering(args.gallery, args.run)
        else:
            run = c.start_clustering(
                args.gallery, args.strict or 0.0, args.loose or 0.0, args.update, args.identity_prefix
            )
            print(f"clustering {run.face_count:,} faces of {args.gallery}: run {run.run_id}", file=sys.stderr)
        try:
            run = _follow(c, args.gallery, run) if run.state == "RUNNING" else run
        except KeyboardInterrupt:
            print(
                f"\nstopped watching; run {run.run_id} goes on on the server: "
                f"faceid cluster {args.gallery} --run {run.run_id}",
                file=sys.stderr,
            )
            return 130
        top = (
            list(itertools.islice(c.list_clusters(args.gallery, run.run_id, min_size=2), args.show))
            if (run.state == "SUCCEEDED")
            else []
        )
    if args.json:
        _print_json({"run": run, "largest": top})
        return 0 if run.state == "SUCCEEDED" else 1
    if run.state != "SUCCEEDED":
        print(f"run {run.run_id} {run.state.lower()}: {run.error or run.phase}", file=sys.stderr)
        return 1
    clustered = run.face_count - run.singleton_count
    print(
        f"run {run.run_id}: {run.face_count:,} faces → {run.cluster_count:,} clusters of two or more faces "
        f"({clustered:,} faces) and {run.singleton_count:,} singletons "
        f"(distances {run.strict_distance:g}/{run.loose_distance:g})"
    )
    for k in top:
        print(
            f"  #{k.rank:<5} {len(k.face_ids):>6} faces  cohesion {k.cohesion:.3f}  "
            f"mostly {k.identity_id or '-'}  (face {k.representative_face_id})"
        )
    if run.cluster_count > len(top):
        print(f"  … all: faceid --json cluster {args.gallery} --run {run.run_id} --show {run.cluster_count}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.identity:
            v = c.verify(
                args.gallery, photo=args.photo.read_bytes(), identity_id=args.identity, face=args.face
            )
        else:
            v = c.verify(
                args.gallery,
                photo=args.photo.read_bytes(),
                other_photo=args.other.read_bytes(),
                face=args.face,
            )
    if args.json:
        _print_json(v)
    else:
        verdict = "same person" if v.is_match else "different people"
        print(
            f"{verdict}: distance {v.distance:.3f} (threshold {v.threshold:.3f}), "
            f"similarity {v.similarity:.3f}"
        )
    return 0


def cmd_identities(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.action == "show":
            result: Any = c.get_identity(args.gallery, args.identity)
        elif args.action == "delete":
            result = {"deleted": args.identity, "face_ids": c.delete_identity(args.gallery, args.identity)}
        else:
            result = list(c.list_identities(args.gallery))
    if args.json:
        _print_json(result)
    elif args.action == "list":
        for i in result:
            print(f"{i.identity_id:<32} {len(i.face_ids):>4} faces  {i.display_name}")
        print(f"{len(result)} identities")
    elif args.action == "show":
        print(
            f"{result.identity_id}: {result.display_name or '(no display name)'}\n"
            f"  faces {result.face_ids}\n  attributes {json.dumps(result.attributes)}\n"
            f"  created {result.create_time}, updated {result.update_time}"
        )
    else:
        print(f"deleted {args.identity} and its {len(result['face_ids'])} faces")
    return 0


# ---- local pipeline --------------------------------------------------------------------------
def cmd_faces(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from faceid.engine.config import PipelineConfig
    from faceid.engine.domain.errors import FaceIdError
    from faceid.engine.vision.pipeline import FacePipeline

    config = PipelineConfig()
    pipeline = FacePipeline(replace(config, detect=replace(config.detect, upsample=args.upsample)))
    status, results = 0, []
    for path in args.photos:
        try:
            faces = pipeline.process(Path(path).read_bytes())
        except (FaceIdError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            results.append(
                {
                    "photo": str(path),
                    "faces": [
                        {
                            "box": dataclasses.asdict(f.box),
                            "score": f.detection.score,
                            "landmarks": f.detection.landmarks.tolist(),
                            "embedding": f.embedding.tolist(),
                        }
                        for f in faces
                    ],
                }
            )
            continue
        print(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
        for i, f in enumerate(faces):
            b = f.box
            print(
                f"  face {i}: box ({b.left:.0f}, {b.top:.0f})–({b.right:.0f}, {b.bottom:.0f}) "
                f"score {f.detection.score:.2f}"
            )
    if args.json:
        _print_json(results)
    return status


def face_arg(value: str) -> str | tuple[float, float, float, float]:
    """``--face``: "largest", "centre" or LEFT,TOP,RIGHT,BOTTOM (pixels of the upright photo)."""
    if value in ("largest", "centre"):
        return value
    try:
        left, top, right, bottom = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give largest, centre or a box as LEFT,TOP,RIGHT,BOTTOM in pixels"
        ) from None
    return (left, top, right, bottom)


def _face_argument(p: argparse.ArgumentParser, what: str = "the face the photo is of") -> None:
    p.add_argument(
        "--face",
        type=face_arg,
        default=None,
        help=f"{what}: largest, centre, or a box LEFT,TOP,RIGHT,BOTTOM (default: the server's rule)",
    )


def build_parser() -> argparse.ArgumentParser:
    statuses = "\n".join(f"  {status:>3}  {meaning}" for status, meaning in EXIT_STATUSES.items())
    parser = _Parser(
        prog="faceid",
        description=__doc__,
        epilog=f"exit statuses:\n{statuses}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--config", type=Path, default=None, help="TOML file with a [server] table")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: SQLite in the data dir)")
    p.add_argument("--log-level", default=None)
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (trusted networks only)")
    p.add_argument("--processes", type=int, default=None, help="server processes on one port (default 1)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", default=None, help="PEM CA: require client certificates (mTLS)")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="any setting (`faceid settings` lists them), e.g. index.nprobe_min=32 (repeatable)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("settings", help="every setting `faceid serve` takes, its value and its variable")
    p.add_argument("--config", type=Path, default=None, help="TOML file with a [server] table")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser(
        "bench",
        help="drive a server with load and report throughput and latency (see benchmarks/load.py)",
        description="Options after `bench` go to the load generator: python -m faceid.benchmarks.load --help",
    )
    p.add_argument("load_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("keys", help="create, list or revoke API keys (on the server's database)")
    p.add_argument("action", nargs="?", choices=["list", "create", "revoke"], default="list")
    p.add_argument("key_id", nargs="?", help="the key to revoke")
    p.add_argument("--role", choices=["reader", "writer", "admin"], default="reader")
    p.add_argument("--gallery", action="append", help="a gallery the key may use (repeatable)")
    p.add_argument("--all-galleries", action="store_true", help="the key may use every gallery")
    p.add_argument("--description", default="", help="who or what the key is for")
    p.add_argument("--all", action="store_true", help="list revoked keys too")
    p.add_argument("--config", type=Path, default=None, help="the server's TOML file")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--database-url", default=None)
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("galleries", help="list, create or delete galleries")
    p.add_argument("action", nargs="?", choices=["list", "create", "delete"], default="list")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_galleries)

    p = sub.add_parser("enroll", help="enrol a photo, or a folder laid out as IDENTITY/photo.jpg")
    p.add_argument("gallery")
    p.add_argument("path", type=Path)
    p.add_argument("--identity", help="identity of a single photo (default: the file name)")
    p.add_argument("--all-faces", action="store_true", help="enrol every face, not one")
    _face_argument(p)
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser(
        "identify",
        help="who is in this photo (or in each photo of a folder, or each row of a .npy of embeddings)",
    )
    p.add_argument("gallery")
    p.add_argument("photo", type=Path, help="a photo, a folder of photos, or a .npy file of embeddings")
    p.add_argument("--out", type=Path, help="with a folder or a .npy: write the CSV here (default: stdout)")
    p.add_argument("--top-k", type=int, default=5)
    _face_argument(p, "the face to identify (default: every face)")
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser(
        "cluster", help="group a gallery's faces into people (a background run on the server), with progress"
    )
    p.add_argument("gallery")
    p.add_argument("--run", type=int, default=0, help="follow or show this run instead of starting one")
    p.add_argument("--strict", type=float, default=0.0, help="distance two single faces join below")
    p.add_argument("--loose", type=float, default=0.0, help="distance large clusters join below")
    p.add_argument("--show", type=int, default=10, help="how many of the largest clusters to list")
    p.add_argument(
        "--update", type=int, default=0, help="start from this run's clusters; assign only the faces it lacks"
    )
    p.add_argument(
        "--identity-prefix",
        default="",
        help="only faces of identities whose id starts with this (e.g. unknown-)",
    )
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("verify", help="is this photo of that identity (or of the person in another photo)")
    p.add_argument("gallery")
    p.add_argument("photo", type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--identity")
    group.add_argument("--other", type=Path)
    _face_argument(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("identities", help="list, show or delete identities")
    p.add_argument("gallery")
    p.add_argument("action", nargs="?", choices=["list", "show", "delete"], default="list")
    p.add_argument("identity", nargs="?")
    p.set_defaults(func=cmd_identities)

    p = sub.add_parser("stats", help="a gallery's counts and index")
    p.add_argument("gallery")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("faces", help="detect, align and embed the faces in photos (in this process)")
    p.add_argument("photos", nargs="+", type=Path)
    p.add_argument("--upsample", type=int, default=1)
    p.set_defaults(func=cmd_faces)
    for command in sub.choices.values():
        _connection_options(command, defaults=False)
    return parser


def _connection_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """--json, --server, --api-key and the rest: on the top parser with their defaults, and on each
    command's parser too without (SUPPRESS: one not given after the command leaves the value
    given before it, or the default), so that they work on either side of the command."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    env = os.environ.get
    p.add_argument(
        "--server", default=default(env("FACEID_SERVER", "127.0.0.1:50051")), help="or $FACEID_SERVER"
    )
    p.add_argument("--timeout", type=float, default=default(60.0), help="seconds per call")
    p.add_argument("--json", action="store_true", default=default(False), help="JSON output for scripts")
    p.add_argument("--api-key", default=default(env("FACEID_API_KEY")), help="or $FACEID_API_KEY")
    p.add_argument("--ca-file", default=default(env("FACEID_CA_FILE")), help="TLS: CA to trust")
    p.add_argument("--cert-file", default=default(env("FACEID_CERT_FILE")), help="mutual TLS")
    p.add_argument("--key-file", default=default(env("FACEID_KEY_FILE")), help="mutual TLS")


class _UsageError(Exception):
    """A wrong command line, as argparse words it, and the parser (``faceid``, ``faceid keys``…)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog, self.message = prog, message


class _Parser(argparse.ArgumentParser):
    """The parsers of ``faceid`` and its commands: a usage error is one line (what argparse says
    and how to get help, no usage block), reported by :func:`main` like every other failure."""

    def error(self, message: str) -> Any:
        raise _UsageError(self.prog, f"{message} (see: {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if (
            args.command != "keys"
            and getattr(args, "action", None) in ("create", "delete")
            and not (getattr(args, "name", None) or getattr(args, "identity", None))
        ):
            what = "the gallery's name" if args.command == "galleries" else "an identity id"
            prog = f"faceid {args.command}"
            raise _UsageError(prog, f"{args.action} needs {what} (see: {prog} --help)")
    except _UsageError as exc:  # --json anywhere on the line asks for a JSON error line
        return _report(exc.prog, CommandError(exc.message, 2), as_json="--json" in argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return result
    except BaseException as exc:
        if isinstance(exc, SystemExit) or os.environ.get("FACEID_DEBUG"):
            raise
        return _report(f"faceid {args.command}", _failure(args, exc), as_json=args.json)


def _report(prog: str, failure: CommandError, as_json: bool) -> int:
    """A failure's one stderr line (``prog: message``, or a JSON object with ``--json``); returns
    its exit status.  A closed stdout (141) says nothing: nobody is reading."""
    if failure.status == 141:
        with contextlib.suppress(OSError):  # nor at the interpreter's exit, when it flushes stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if as_json:
        code = failure.code or CODE_FOR_EXIT.get(failure.status, "UNKNOWN")
        print(json.dumps({"error": failure.message, "code": code, "exit": failure.status}), file=sys.stderr)
    else:
        print(f"{prog}: {failure.message}", file=sys.stderr)
    return failure.status


def _failure(args: argparse.Namespace, exc: BaseException) -> CommandError:
    """Any exception a command lets out, as one line for a person and an exit status."""
    from faceid.client.client import FaceIdClientError

    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, FaceIdClientError):
        return CommandError(
            _server_said(args, exc.code, exc.message), EXIT_FOR_CODE.get(exc.code, 1), exc.code
        )
    if isinstance(exc, KeyboardInterrupt):
        return CommandError("interrupted", 130)
    if isinstance(exc, BrokenPipeError):
        return CommandError("", 141)
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in SERVER_PACKAGES:
        return CommandError(
            f"this command runs the engine, which needs {exc.name}: this installation has the client "
            "only; install the server with: pip install 'faceid[cpu]' (or 'faceid[gpu]')",
            2,
        )
    if isinstance(exc, FileNotFoundError):
        return CommandError(f"{exc.filename}: no such file or folder", 3)
    if isinstance(exc, PermissionError):
        return CommandError(f"{exc.filename}: permission denied", 4)
    if isinstance(exc, OSError):
        return CommandError(f"{exc.filename or 'input/output'}: {exc.strerror or exc}")
    from faceid.engine.domain import errors

    if isinstance(exc, errors.NotFoundError):
        return CommandError(str(exc), 3)
    if isinstance(exc, errors.AlreadyExistsError):
        return CommandError(str(exc), 7)
    if isinstance(exc, errors.FaceIdError | ValueError):  # an input of the command line, a file's contents
        return CommandError(str(exc), 2)
    return CommandError(
        f"internal error ({type(exc).__name__}: {_first_line(exc)}); please report it with the command "
        "you ran (FACEID_DEBUG=1 shows the traceback)",
        70,
    )


def _server_said(args: argparse.Namespace, code: str, message: str) -> str:
    """The server's message, with what to change on this side where the code says it."""
    if code == "UNAVAILABLE" and "starting" not in message:
        return (
            f"cannot reach the server at {args.server} ({message}); is it running? Give its address "
            "with --server or $FACEID_SERVER"
        )
    if code == "DEADLINE_EXCEEDED":
        return (
            f"no answer from the server at {args.server} within {args.timeout:g} s ({message}); is it "
            "running and reachable? (--server; --timeout for long calls)"
        )
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") and "--api-key" not in message:
        return f"{message} (the key: --api-key or $FACEID_API_KEY; `faceid keys create` makes one)"
    return f"{code}: {message}"


if __name__ == "__main__":
    sys.exit(main())
