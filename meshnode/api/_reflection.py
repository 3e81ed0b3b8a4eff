"""Server reflection under both names clients ask for: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcurl, Postman and newer gRPC libraries ask ``v1`` first (and some only ``v1``); grpcio-reflection ships only
``v1alpha``. The two protocols are the same messages in two proto packages, identical on the wire, so the ``v1``
service runs grpcio-reflection's servicer under ``v1``'s method path. Its descriptor is ``v1alpha``'s file with
the package renamed, added to the default pool, so that a client can describe the ``v1`` service itself too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import _async, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.reflection import SERVICE_NAME as V1ALPHA_SERVICE

V1_SERVICE: Final = "grpc.reflection.v1.ServerReflection"
_V1_FILE: Final = "grpc/reflection/v1/reflection.proto"
_ALPHA: Final = ".grpc.reflection.v1alpha."
_V1: Final = ".grpc.reflection.v1."


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """The ``grpc.reflection.v1`` file: ``v1alpha``'s descriptor with its package and type references renamed."""
    fdp = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fdp)
    fdp.name, fdp.package = _V1_FILE, "grpc.reflection.v1"
    for message in fdp.message_type:
        for f in message.field:
            if f.type_name.startswith(_ALPHA):
                f.type_name = _V1 + f.type_name[len(_ALPHA):]
    for service in fdp.service:
        for m in service.method:
            m.input_type = _V1 + m.input_type[len(_ALPHA):]
            m.output_type = _V1 + m.output_type[len(_ALPHA):]
    return fdp


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pool.Add(v1_file())


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server`` (before it starts), listing ``service_names`` and both."""
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    servicer = _async.ReflectionServicer((*service_names, V1ALPHA_SERVICE, V1_SERVICE), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(V1_SERVICE, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        ),
    })
    server.add_generic_rpc_handlers((v1,))
