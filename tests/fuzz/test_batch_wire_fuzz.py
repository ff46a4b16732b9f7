"""rpc/batch_wire.py writes CheckStream batches byte for byte as protobuf serializes them,
and so does its compiled twin (rpc/_batch_wire.pyx), called here on its own.

The reference is the generated code: `fill_brief` into `va_pb2.CheckBatchResponse`
and `SerializeToString`. Any batch a responder can answer is drawn: times anywhere a
Timestamp's int64 seconds reach (whole seconds in the fast path's range, and not),
serials of 1 to 20 octets, every kind, status, cause and reason, partitions and key
ids of any length, error items of any text.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from jpki_va.core.domain import CertKind, CrlReason, LossCause, Status
from jpki_va.protos import va_pb2
from jpki_va.server.responder.status import Brief, PackedRecord
from jpki_va.server.rpc import _batch_wire, batch_wire
from jpki_va.server.rpc.batch_wire import ItemError, py_batch_response
from jpki_va.server.rpc.pb import fill_brief
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
