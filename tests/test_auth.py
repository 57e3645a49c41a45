"""API keys, roles, gallery scopes and TLS, through a real server process and the real client."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceid.client.client import FaceIdClient, FaceIdClientError, enroll_request, tls_credentials
from faceid.engine.domain.access import Role
from faceid.engine.service.access import KeyRing
from faceid.engine.store import KeyStore, make_engine
from faceid.engine.store.migrate import upgrade
from faceid.proto.faceid.v1 import faceid_pb2
from faceid.server.auth import RULES

from .helpers import ServerProcess, code_of
from .helpers import unit_values as unit


def faceid_keys(data_dir: Path, *args: str, options: tuple[str, ...] = ()) -> str:
    """``faceid [options] keys ARGS`` on the server's data directory; its standard output."""
    out = subprocess.run(
        [sys.executable, "-m", "faceid.client.cli", *options, "keys", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def new_key(data_dir: Path, role: str, *galleries: str) -> str:
    scope = [a for g in galleries for a in ("--gallery", g)] or ["--all-galleries"]
    created = json.loads(faceid_keys(data_dir, "create", "--role", role, *scope, options=("--json",)))
    token: str = created["api_key"]
    return token


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("auth"), "--log-level", "ERROR")
    s.start()
    assert s.admin_key.startswith("faceid_"), "a first start prints an admin key"
    with FaceIdClient(s.address, timeout=60, api_key=s.admin_key) as admin:
        for gallery in ("alpha", "beta"):
            admin.create_gallery(gallery)
            admin.enroll(gallery, f"{gallery}-person", embedding=unit(1))
    yield s
    s.stop()


def client(server: ServerProcess, key: str | None) -> FaceIdClient:
    return FaceIdClient(server.address, timeout=60, api_key=key)


def test_every_method_of_the_service_has_an_access_rule() -> None:
    methods = set(faceid_pb2.DESCRIPTOR.services_by_name["FaceId"].methods_by_name)
    assert methods == set(RULES)


def test_calls_without_a_valid_key_are_unauthenticated(server: ServerProcess) -> None:
    with client(server, None) as anonymous:
        assert code_of(lambda: anonymous.list_galleries()) == "UNAUTHENTICATED"
    key_id = server.admin_key.split("_")[1]
    for wrong in ("nonsense", f"faceid_{key_id}_not-the-secret", "faceid_000000000000_x", ""):
        with client(server, wrong or None) as c:
            assert code_of(lambda c=c: c.identify("alpha", embedding=unit(1))) == "UNAUTHENTICATED"
    with grpc.insecure_channel(server.address) as channel:  # health checks need no key
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_roles_nest_reader_writer_admin(server: ServerProcess) -> None:
    reader = new_key(server.data_dir, "reader", "alpha")
    writer = new_key(server.data_dir, "writer", "alpha")
    time.sleep(2.5)  # the server reloads keys every 2 s
    with client(server, reader) as r:
        assert r.identify("alpha", embedding=unit(1))[0].matches[0].identity_id == "alpha-person"
        assert r.get_gallery("alpha").face_count >= 1
        assert code_of(lambda: r.enroll("alpha", "x", embedding=unit(2))) == "PERMISSION_DENIED"
        assert code_of(lambda: r.delete_identity("alpha", "alpha-person")) == "PERMISSION_DENIED"
        stream = [enroll_request("alpha", "y", embedding=unit(3))]
        assert code_of(lambda: list(r.bulk_enroll(stream))) == "PERMISSION_DENIED"
        assert r.cluster_faces("alpha", [unit(1), unit(2)]).clusters  # reading: a reader's
        assert code_of(lambda: r.start_clustering("alpha")) == "PERMISSION_DENIED"  # a writer's
    with client(server, writer) as w:
        w.enroll("alpha", "writer-made", embedding=unit(4))
        w.delete_identity("alpha", "writer-made")
        assert code_of(lambda: w.create_gallery("gamma")) == "PERMISSION_DENIED"
        assert code_of(lambda: w.delete_gallery("alpha")) == "PERMISSION_DENIED"
    with client(server, server.admin_key) as a:
        assert a.get_gallery("alpha").identity_count == 1  # nothing the refused calls tried happened


def test_a_key_of_one_gallery_learns_nothing_about_another(server: ServerProcess) -> None:
    key = new_key(server.data_dir, "admin", "alpha")
    time.sleep(2.5)
    with client(server, key) as c:
        assert [g.name for g in c.list_galleries()] == ["alpha"]
        denied = []
        for gallery in ("beta", "no-such-gallery"):  # one exists, one does not: the same answer
            with pytest.raises(FaceIdClientError) as info:
                c.get_gallery(gallery)
            denied.append((info.value.code, info.value.message.replace(gallery, "G")))
        assert denied[0] == denied[1] and denied[0][0] == "PERMISSION_DENIED"
        for call in (
            lambda: c.identify("beta", embedding=unit(1)),
            lambda: c.verify("beta", embedding=unit(1), identity_id="beta-person"),
            lambda: c.get_identity("beta", "beta-person"),
            lambda: c.delete_face("beta", 1),
            lambda: c.delete_gallery("beta"),
            lambda: c.create_gallery("beta2"),
            lambda: c.enroll("beta", "intruder", embedding=unit(5)),
            lambda: c.cluster_faces("beta", [unit(1)]),
            lambda: c.start_clustering("beta"),
            lambda: c.get_clustering("beta", 1),
            lambda: list(c.list_clusters("beta", 1)),
            lambda: c.promote_cluster("beta", 1, 1, "intruder"),
            lambda: c.merge_cluster("beta", 1, 1, "beta-person"),
            lambda: c.delete_clustering("beta", 1),
        ):
            assert code_of(call) == "PERMISSION_DENIED"
        stream = [enroll_request("beta", "intruder", embedding=unit(6))]
        assert code_of(lambda: list(c.bulk_enroll(stream))) == "PERMISSION_DENIED"
        mixed = [enroll_request("alpha", "insider", embedding=unit(7)), *stream]  # one item out of scope
        before = c.get_gallery("alpha").face_count
        assert code_of(lambda: c.enroll_batch(mixed)) == "PERMISSION_DENIED"
        assert c.get_gallery("alpha").face_count == before  # the whole batch was refused
    with client(server, server.admin_key) as a:
        assert a.get_gallery("beta").identity_count == 1
        assert sorted(g.name for g in a.list_galleries()) == ["alpha", "beta"]


def test_a_revoked_key_stops_working_within_the_refresh_period(server: ServerProcess) -> None:
    key = new_key(server.data_dir, "reader")
    key_id = key.split("_")[1]
    time.sleep(2.5)
    with client(server, key) as c:
        assert c.get_gallery("beta").name == "beta"
        assert key_id in faceid_keys(server.data_dir, "list")
        assert f"revoked key {key_id}" in faceid_keys(server.data_dir, "revoke", key_id)
        time.sleep(2.5)
        assert code_of(lambda: c.get_gallery("beta")) == "UNAUTHENTICATED"
    assert key_id not in faceid_keys(server.data_dir, "list")
    assert key_id in faceid_keys(server.data_dir, "list", "--all")


def test_keys_are_stored_only_as_digests(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    upgrade(engine)
    store = KeyStore(engine)
    new = store.create(Role.WRITER, ["alpha"], "ingest job")
    secret = new.token.split("_", 2)[2]
    assert all(secret.encode() not in f.read_bytes() for f in tmp_path.iterdir())  # database and WAL
    ring = KeyRing(store)
    found = ring.authenticate(new.token)
    assert found is not None and (found.key_id, found.role, found.galleries) == (
        new.key.key_id,
        Role.WRITER,
        ("alpha",),
    )
    assert ring.authenticate(new.token[:-1] + ("A" if new.token[-1] != "A" else "B")) is None
    store.revoke(new.key.key_id)
    ring.refresh()
    assert ring.authenticate(new.token) is None


def test_serving_without_auth_needs_the_flag(tmp_path: Path) -> None:
    open_server = ServerProcess(tmp_path / "open", "--no-auth").start()
    try:
        assert not open_server.admin_key
        with client(open_server, None) as c:
            c.create_gallery("open")
    finally:
        open_server.stop()


# ---- TLS ---------------------------------------------------------------------------------------
def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, all signed by the CA."""
    folder = tmp_path_factory.mktemp("certs")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("faceid test CA", ca_key, None)
    _pem(folder, "ca", ca, ca_key)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        _pem(folder, name, _cert(f"faceid {name}", key, (ca, ca_key)), key)
    return folder


def test_tls_serves_only_clients_that_trust_it(certs: Path, tmp_path: Path) -> None:
    s = ServerProcess(
        tmp_path / "tls", "--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key")
    )
    s.start()
    try:
        with FaceIdClient(
            s.address, timeout=30, api_key=s.admin_key, credentials=tls_credentials(str(certs / "ca.crt"))
        ) as c:
            assert c.create_gallery("secure").name == "secure"
        with FaceIdClient(s.address, timeout=5, api_key=s.admin_key) as plain:
            assert code_of(lambda: plain.list_galleries()) == "UNAVAILABLE"
    finally:
        s.stop()


def test_mutual_tls_refuses_a_client_without_a_certificate(certs: Path, tmp_path: Path) -> None:
    s = ServerProcess(
        tmp_path / "mtls",
        "--tls-cert",
        str(certs / "server.crt"),
        "--tls-key",
        str(certs / "server.key"),
        "--tls-client-ca",
        str(certs / "ca.crt"),
    )
    s.start()
    ca = str(certs / "ca.crt")
    try:
        mutual = tls_credentials(ca, str(certs / "client.crt"), str(certs / "client.key"))
        with FaceIdClient(s.address, timeout=30, api_key=s.admin_key, credentials=mutual) as c:
            assert c.create_gallery("mutual").name == "mutual"
        with FaceIdClient(s.address, timeout=5, api_key=s.admin_key, credentials=tls_credentials(ca)) as c:
            assert code_of(lambda: c.list_galleries()) == "UNAVAILABLE"
    finally:
        s.stop()
