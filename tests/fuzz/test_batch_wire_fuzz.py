"""rpc/batch_wire.py writes CheckStream batches byte for byte as protobuf serializes them,
and so does its compiled twin (rpc/_batch_wire.pyx), called here on its own; and it
reads a batch request from its bytes as protobuf parses them.

The reference is the generated code: `fill_brief` into `va_pb2.CheckBatchResponse`
and `SerializeToString`. Any batch a responder can answer is drawn: times anywhere a
Timestamp's int64 seconds reach (whole seconds in the fast path's range, and not),
serials of 1 to 20 octets, every kind, status, cause and reason, partitions and key
ids of any length, error items of any text.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from jpki_va.core.domain import CertKind, CrlReason, LossCause, Status, record_key
from jpki_va.protos import va_pb2
from jpki_va.server.responder.status import Brief, PackedRecord
from jpki_va.server.rpc import _batch_wire, batch_wire
from jpki_va.server.rpc.batch_wire import (
    ItemError,
    PlainBatch,
    batch_request,
    check_request,
    py_batch_response,
)
from jpki_va.server.rpc.pb import fill_brief, plain_kind_serial
from tests.fuzz.strategies import TEXT, integers

_FAST = (0x1000_0000, 0x8_0000_0000)  # batch_wire's five-byte varint range, in seconds
_MICROS = 10**6
_micros = st.one_of(
    integers(_FAST[0], _FAST[1] - 1).map(lambda s: s * _MICROS),  # the index's times
    st.sampled_from([(_FAST[0] - 1) * _MICROS, _FAST[1] * _MICROS, 0, -1, 1, 999_999]),
    integers(-(2**63) + 1, 2**63 - 1).map(lambda s: s * _MICROS),
    integers(-(2**63) * _MICROS + _MICROS, (2**63 - 1) * _MICROS),
)
_records = st.builds(
    PackedRecord,
    _micros,
    _micros,
    st.one_of(st.sampled_from(("", "131016")), TEXT),
    st.one_of(st.sampled_from((b"", bytes(20))), st.binary(max_size=300)),
    st.none() | _micros,
    st.sampled_from([0, *map(int, LossCause)]),
    st.sampled_from([int(r) for r in CrlReason]),
)
_briefs = st.builds(
    Brief,
    st.none() | st.sampled_from(CertKind),
    st.one_of(integers(1, 2**64), st.integers(1, 2**160 - 1)),
    st.sampled_from(Status),
    _micros,
    integers(0, 2**64 - 1),
    st.none() | _records,
)
_errors = st.builds(
    ItemError,
    st.sampled_from(list(va_pb2.CheckErrorCode.values())),
    TEXT | st.text(min_size=120, max_size=300),
)
_items = st.lists(st.one_of(_briefs, _briefs, _errors))


def _reference(items: list[Brief | ItemError]) -> bytes:
    response = va_pb2.CheckBatchResponse()
    for item in items:
        if isinstance(item, ItemError):
            response.results.add(error=item.text, error_code=item.code)
        else:
            fill_brief(response.results.add().status, item)
    return response.SerializeToString()


@given(_items)
@example([])
@example([ItemError(0, "")])
@example(
    [
        Brief(
            CertKind.CARD_SIGN,
            2**159,
            Status.REVOKED,
            _FAST[1] * _MICROS - _MICROS,
            2**64 - 1,
            PackedRecord(
                _FAST[0] * _MICROS,
                _FAST[1] * _MICROS - _MICROS,
                "9" * 40,
                bytes(30),
                _FAST[0] * _MICROS,
                LossCause.RECORD_ERROR,
                CrlReason.AA_COMPROMISE,
            ),
        )
    ]
)
def test_a_batch_is_encoded_exactly_as_protobuf_does(items: list[Brief | ItemError]) -> None:
    data = py_batch_response(items)
    assert data == _reference(items)
    assert _batch_wire.results_bytes(list(items), ItemError, batch_wire._item) == data
    assert len(va_pb2.CheckBatchResponse.FromString(data).results) == len(items)


def _check_request(kind: int, serial: bytes, as_of: int | None) -> va_pb2.CheckRequest:
    request = va_pb2.CheckRequest(
        cert=va_pb2.CertRef(kind_serial=va_pb2.KindSerial(kind=kind, serial=serial))  # type: ignore[arg-type]
    )
    if as_of is not None:
        request.as_of.seconds = as_of
    return request


_plain = st.builds(_check_request, st.integers(1, 4), st.binary(min_size=1, max_size=20), st.none())
_requests = st.one_of(
    _plain,
    st.builds(
        _check_request,
        st.integers(-1, 6),
        st.binary(max_size=22),
        st.none() | st.integers(0, 2**40),
    ),
    st.just(va_pb2.CheckRequest()),
)
_batch_bytes = st.one_of(
    st.lists(_plain, min_size=1, max_size=8), st.lists(_requests, max_size=8)
).map(lambda requests: va_pb2.CheckBatchRequest(requests=requests).SerializeToString())


def _mangled(draw: st.DrawFn, raw: bytes) -> bytes:
    """`raw`, or it with a byte changed or cut, or any bytes."""
    how = draw(st.sampled_from(("as is", "changed", "cut", "any")))
    if how == "any":
        return draw(st.binary(max_size=120))
    if not raw or how == "as is":
        return raw
    at = draw(st.integers(0, len(raw) - 1))
    if how == "cut":
        return raw[:at]
    return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]


@st.composite
def _raw_batches(draw: st.DrawFn) -> bytes:
    """A serialized batch, one with a byte changed or cut, or any bytes."""
    return _mangled(draw, draw(_batch_bytes))


@st.composite
def _raw_requests(draw: st.DrawFn) -> bytes:
    """A serialized CheckRequest, one with a byte changed or cut, or any bytes."""
    return _mangled(draw, draw(st.one_of(_plain, _requests)).SerializeToString())


@given(_raw_requests())
@example(b"\x0a\x05ab")  # a field that claims 5 bytes and has 2
@example(b"")
def test_a_check_request_is_read_as_protobuf_parses_it(raw: bytes) -> None:
    """Unary Check's deserializer: the usual request as the record key the parsed
    request names, any other as protobuf's parse, and protobuf's refusal raised."""
    try:
        expected = va_pb2.CheckRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            check_request(raw)
        return
    read = check_request(raw)
    if not isinstance(read, bytes):
        assert read == expected
        return
    kind, serial = plain_kind_serial(expected)
    assert serial and read == record_key(kind, serial)


@given(_raw_batches())
@example(b"\x0a\x05ab")  # a request that claims 5 bytes and has 2
@example(b"")
def test_a_batch_request_is_read_as_protobuf_parses_it(raw: bytes) -> None:
    """CheckStream's deserializer: the usual batch as keys that are exactly what the
    parsed requests name, any other as protobuf's parse, and protobuf's refusal raised."""
    try:
        expected = va_pb2.CheckBatchRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            batch_request(raw)
        return
    read = batch_request(raw)
    if not isinstance(read, PlainBatch):
        assert read == expected
        return
    assert read.parsed() == expected
    named = [plain_kind_serial(request) for request in expected.requests]
    assert all(serial for _, serial in named)  # every one plain
    assert read.keys == [record_key(kind, serial) for kind, serial in named]
    assert read.per_kind[1:] == [sum(kind == n for kind, _ in named) for n in range(1, 5)]
