"""gRPC server reflection in both versions: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) implements only ``grpc.reflection.v1alpha.ServerReflection``, the draft
that gRPC has since deprecated; clients written against the standard ask for
``grpc.reflection.v1.ServerReflection`` (some fall back to v1alpha only when v1 answers
UNIMPLEMENTED, some never do).  This module serves both, from one servicer and one set of
descriptors:

* **One implementation.** The two versions' protos are wire-identical: the same messages with the
  same fields, numbers and types; only the package differs, and with it the method's path.  So
  grpcio-reflection's own (async) v1alpha servicer answers both: v1alpha is registered as
  grpcio-reflection registers it, and v1 is a generic handler for
  ``/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`` whose serializers are the v1alpha
  message classes (the bytes of a v1 request parse as a v1alpha request, and a v1alpha response is
  a v1 response on the wire).  Nothing of the reflection logic is copied here.
* **Both listed.** ``list_services`` names both reflection services beside the server's own.
* **v1 described.** ``file_containing_symbol("grpc.reflection.v1.ServerReflection")`` (which a
  client such as grpcurl asks before it calls a service) needs a v1 file in the pool the servicer
  reads, the default descriptor pool.  grpcio-reflection has none, so :func:`v1_file_descriptor`
  makes it from the v1alpha file: package and type references renamed, the file named and its
  options set as upstream's ``grpc/reflection/v1/reflection.proto``, the v1alpha file's
  ``deprecated`` dropped.  It is added once per process.  A grpcio-reflection that ships
  ``grpc_reflection.v1`` is used instead, so that its import never meets a file of the same name.
* **No key.** Like health checking, reflection passes the gate (server/auth.py guards only
  ``/faceid.v1.FaceId/``): it tells what the public .proto says, nothing of the data.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool  # type: ignore[import-untyped]  # no stubs installed
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA: str = reflection.SERVICE_NAME  # "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package  # "grpc.reflection.v1alpha"
_V1_PACKAGE = V1.rsplit(".", 1)[0]


def _renamed(type_name: str) -> str:
    """A fully qualified type reference (".grpc.reflection.v1alpha.X") moved to the v1 package."""
    prefix = f".{_ALPHA_PACKAGE}."
    return f".{_V1_PACKAGE}.{type_name[len(prefix) :]}" if type_name.startswith(prefix) else type_name


def _rename_messages(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            if field.HasField("type_name"):  # a message or enum field
                field.type_name = _renamed(field.type_name)
        _rename_messages(message.nested_type)


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``, made from grpcio-reflection's v1alpha file."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = _V1_PACKAGE
    _rename_messages(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type)
            method.output_type = _renamed(method.output_type)
    proto.options.Clear()  # v1alpha's are its own packages' and `deprecated`; upstream v1's follow
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_multiple_files = True
    proto.options.java_outer_classname = "ServerReflectionProto"
    return proto


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Put the v1 reflection file in ``pool`` unless it is there (idempotent)."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    try:  # a grpcio-reflection that ships v1 registers upstream's file on import
        importlib.import_module("grpc_reflection.v1.reflection_pb2")
        return
    except ImportError:
        pass
    pool.Add(v1_file_descriptor())


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and both versions.

    Call it before the server starts, once per server.  The descriptors come from the default
    pool: every service named must be imported (its ``_pb2`` module) in this process.
    """
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    names = list(dict.fromkeys([*service_names, V1, V1ALPHA]))
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": info}),)
    )
