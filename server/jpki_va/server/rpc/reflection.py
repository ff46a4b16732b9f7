"""Server reflection on both grpc.reflection.v1 and v1alpha, from one servicer.

grpcio-reflection (as pinned) implements only v1alpha; v1 is the same protocol under
another package name, message for message and field number for field number, so the
v1alpha servicer answers v1 calls byte for byte. The v1 descriptor is v1alpha's with
the package renamed, added to the default pool so a client can resolve v1 itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1 = f"{V1_PACKAGE}.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return  # added already (another server in this process), or shipped by a library
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old = f".{file.package}."
    file.name, file.package = _V1_FILE, V1_PACKAGE
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # a message or enum field
                field.type_name = field.type_name.replace(old, f".{V1_PACKAGE}.")
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, f".{V1_PACKAGE}.")
            method.output_type = method.output_type.replace(old, f".{V1_PACKAGE}.")
    pool.Add(file)


def enable_reflection(service_names: Sequence[str], server: grpc.Server) -> None:
    """Reflection of `service_names` (and of itself, both versions) on `server`."""
    _add_v1_descriptor()
    servicer = reflection.ReflectionServicer((*service_names, V1, V1ALPHA))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": v1}),)
    )
