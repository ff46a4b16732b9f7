"""The client reads whatever a server sends into its models, or raises ProtocolError.

`VaClient` promises one exception hierarchy (`ClientError`); a response that does not
follow va.proto (an enum value it does not know, a time no Timestamp may hold, a
missing field) must become `ProtocolError`, never a bare ValueError or KeyError. The
CRL download is also driven end to end: a real gRPC server on 127.0.0.1 streams
drawn chunks, and `VaClient.crl` returns the CRL or raises a ClientError.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from jpki_va.client import VaClient
from jpki_va.client._errors import ClientError, ProtocolError
from jpki_va.client._models import (
    CertificateStatus,
    CrlMeta,
    IssuerSet,
    MappedCertificate,
    RevocationUpdate,
    SigningRecord,
)
from jpki_va.core.domain import CertKind
from jpki_va.protos import crl_pb2, crl_pb2_grpc, mapping_pb2, record_pb2, va_pb2
from tests.fuzz.strategies import messages

_CONVERTERS: list[tuple[type[Message], Callable[[Any], object]]] = [
    (va_pb2.CertificateStatus, CertificateStatus.from_proto),
    (va_pb2.ListIssuersResponse, IssuerSet.from_proto),
    (mapping_pb2.MappedCertificate, MappedCertificate.from_proto),
    (record_pb2.SigningRecord, SigningRecord.from_proto),
    (crl_pb2.WatchRevocationsResponse, RevocationUpdate.from_proto),
    (crl_pb2.CrlInfo, CrlMeta.from_proto),
]


@pytest.mark.parametrize(
    ("message", "convert"), _CONVERTERS, ids=lambda v: getattr(v, "__name__", "")
)
def test_any_answer_converts_or_is_a_protocol_error(
    message: type[Message], convert: Callable[[Any], object]
) -> None:
    @given(messages(message, hints={"serial": [b"\x01", b"\x00" * 21, b""]}))
    def check(msg: Message) -> None:
        with contextlib.suppress(ProtocolError):
            convert(msg)

    check()


class _Chunks(crl_pb2_grpc.CrlServiceServicer):
    """A CrlService that streams whatever the example put in `chunks`."""

    def __init__(self) -> None:
        self.chunks: list[crl_pb2.CrlChunk] = []

    def GetCrl(
        self, request: crl_pb2.GetCrlRequest, context: grpc.ServicerContext
    ) -> Iterator[crl_pb2.CrlChunk]:
        yield from self.chunks

    def ListCrls(
        self, request: crl_pb2.ListCrlsRequest, context: grpc.ServicerContext
    ) -> crl_pb2.ListCrlsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "only GetCrl here")

    def WatchRevocations(
        self, request: crl_pb2.WatchRevocationsRequest, context: grpc.ServicerContext
    ) -> Iterator[crl_pb2.WatchRevocationsResponse]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "only GetCrl here")

    def GetAuthorityRevocationList(
        self, request: crl_pb2.GetAuthorityRevocationListRequest, context: grpc.ServicerContext
    ) -> crl_pb2.GetAuthorityRevocationListResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "only GetCrl here")


@pytest.fixture(scope="module")
def crl_server() -> Iterator[tuple[str, _Chunks]]:
    servicer = _Chunks()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    crl_pb2_grpc.add_CrlServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def _honest(data: bytes, info: crl_pb2.CrlInfo, size: int) -> list[crl_pb2.CrlChunk]:
    """`data` as a responder sends it: the info (its size and hash true) with the first chunk."""
    info.size = len(data)
    info.sha256 = hashlib.sha256(data).digest()
    parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    first = crl_pb2.CrlChunk(info=info, data=parts[0])
    return [first, *(crl_pb2.CrlChunk(data=p) for p in parts[1:])]


_lock = threading.Lock()


def test_a_crl_download_is_returned_whole_or_refused(crl_server: tuple[str, _Chunks]) -> None:
    target, servicer = crl_server
    chunk_lists = st.one_of(
        st.lists(messages(crl_pb2.CrlChunk), max_size=4),
        st.builds(_honest, st.binary(max_size=300), messages(crl_pb2.CrlInfo), st.integers(1, 64)),
    )

    @given(chunk_lists)
    def check(chunks: list[crl_pb2.CrlChunk]) -> None:
        with _lock:
            servicer.chunks = chunks
            with VaClient(target, insecure=True, timeout=10) as client:
                try:
                    meta, data = client.crl(kind=CertKind.CARD_SIGN, partition="131016")
                except ClientError:
                    return
        # What is returned is what the info announced, byte for byte.
        assert len(data) == meta.size
        assert hashlib.sha256(data).digest() == meta.sha256

    check()
