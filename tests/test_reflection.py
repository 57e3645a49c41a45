"""Server reflection answers in both versions, v1 and v1alpha, on a real server (server/reflection.py).

The clients are grpcio's generic stubs with grpcio-reflection's v1alpha message classes, which are
the v1 messages on the wire, so one client serves for both versions; no key is sent (reflection
needs none).  The last test is a client that knows nothing of faceid but v1 reflection, as grpcurl
is: it builds the API from the answers and calls it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from faceid.proto.faceid.v1 import faceid_pb2

from .helpers import ServerProcess

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
FACEID = "faceid.v1.FaceId"
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("reflection")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def ask(
    channel: grpc.Channel, version: str, *requests: rpb.ServerReflectionRequest
) -> list[rpb.ServerReflectionResponse]:
    """The answers to ``requests``, sent on one ServerReflectionInfo stream of ``version``."""
    info = channel.stream_stream(
        f"/{version}/ServerReflectionInfo",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return list(info(iter(requests), timeout=30))


def files_of(response: rpb.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The files of a file_descriptor_response, by name."""
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    return {f.name: f for f in files}


def wait_serving(channel: grpc.Channel, service: str, seconds: float = 120) -> None:
    """Until health checking says ``service`` is SERVING: a server answers reflection at once, but
    FaceId calls only once its galleries' indexes are open."""
    check = health_pb2_grpc.HealthStub(channel).Check
    deadline = time.monotonic() + seconds
    while True:
        try:
            status = check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError as exc:  # NOT_FOUND: the service's status is not set yet
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        assert time.monotonic() < deadline, f"{service} is not SERVING after {seconds} s"
        time.sleep(0.2)


def symbol(name: str) -> rpb.ServerReflectionRequest:
    return rpb.ServerReflectionRequest(file_containing_symbol=name)


@pytest.mark.parametrize("version", [V1, V1ALPHA])
def test_a_reflection_client_of_either_version_lists_every_service(
    channel: grpc.Channel, version: str
) -> None:
    (answer,) = ask(channel, version, rpb.ServerReflectionRequest(list_services=""))
    names = {s.name for s in answer.list_services_response.service}
    assert {FACEID, "grpc.health.v1.Health", V1, V1ALPHA} <= names


@pytest.mark.parametrize("version", [V1, V1ALPHA])
def test_the_faceid_service_resolves_to_the_faceid_proto_in_either_version(
    channel: grpc.Channel, version: str
) -> None:
    (answer,) = ask(channel, version, symbol(FACEID))
    served = files_of(answer)["faceid/v1/faceid.proto"]
    expected = descriptor_pb2.FileDescriptorProto()
    faceid_pb2.DESCRIPTOR.CopyToProto(expected)
    assert served == expected  # the whole API as the committed code has it, options included
    assert served.options.go_package == "github.com/faceid/faceid/gen/go/faceid/v1;faceidv1"


def test_a_v1_client_can_describe_reflection_v1_itself(channel: grpc.Channel) -> None:
    (answer,) = ask(channel, V1, symbol(V1))
    (served,) = files_of(answer).values()
    assert (served.name, served.package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    assert not served.options.deprecated
    (method,) = served.service[0].method
    assert (method.name, method.input_type, method.output_type) == (
        "ServerReflectionInfo",
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    assert method.client_streaming and method.server_streaming
    (alpha,) = files_of(ask(channel, V1ALPHA, symbol(V1ALPHA))[0]).values()
    assert alpha.package == "grpc.reflection.v1alpha"


@pytest.mark.parametrize("version", [V1, V1ALPHA])
def test_an_unknown_symbol_answers_not_found_and_the_stream_goes_on(
    channel: grpc.Channel, version: str
) -> None:
    missing, found = ask(channel, version, symbol("faceid.v1.NoSuchThing"), symbol(FACEID))
    assert missing.error_response.error_code == NOT_FOUND
    assert missing.original_request.file_containing_symbol == "faceid.v1.NoSuchThing"
    assert "faceid/v1/faceid.proto" in files_of(found)


def test_a_client_that_knows_only_v1_reflection_builds_the_api_and_calls_it(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    (answer,) = ask(channel, V1, symbol(FACEID))
    pool = descriptor_pool.DescriptorPool()  # nothing of faceid's generated code: only the answer
    for file in files_of(answer).values():
        pool.Add(file)
    method = pool.FindServiceByName(FACEID).methods_by_name["CreateGallery"]
    request_class = message_factory.GetMessageClass(method.input_type)
    gallery_class = message_factory.GetMessageClass(method.output_type)
    wait_serving(channel, FACEID)
    create = channel.unary_unary(
        f"/{FACEID}/CreateGallery",
        request_serializer=request_class.SerializeToString,
        response_deserializer=gallery_class.FromString,
    )
    gallery = create(
        request_class(gallery_id="reflected"),
        metadata=[("authorization", f"Bearer {server.admin_key}")],
        timeout=30,
    )
    assert (gallery.name, gallery.dimension) == ("galleries/reflected", 128)
