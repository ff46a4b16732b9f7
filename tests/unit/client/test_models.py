"""An answer whose Timestamp no datetime can hold is a ProtocolError, not a ValueError
(found by tests/fuzz/test_client_parsing_fuzz.py): the client's one exception
hierarchy covers what a server sends."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jpki_va.client._errors import ProtocolError
from jpki_va.client._models import CertificateStatus, CrlMeta, RevocationUpdate
from jpki_va.protos import crl_pb2, va_pb2

_BAD_TIMES = [
    Timestamp(seconds=-(2**63)),
    Timestamp(seconds=253_402_300_800),  # the first second after 9999-12-31
    Timestamp(seconds=0, nanos=-1),
    Timestamp(seconds=0, nanos=1_000_000_000),
]


@pytest.mark.parametrize("stamp", _BAD_TIMES, ids=str)
def test_an_impossible_time_is_a_protocol_error(stamp: Timestamp) -> None:
    status = va_pb2.CertificateStatus(serial=b"\x01", status=va_pb2.CERT_STATUS_GOOD, as_of=stamp)
    with pytest.raises(ProtocolError, match="as_of"):
        CertificateStatus.from_proto(status)
    revoked = va_pb2.CertificateStatus(serial=b"\x01")
    revoked.revocation.time.CopyFrom(stamp)
    with pytest.raises(ProtocolError, match="time"):
        CertificateStatus.from_proto(revoked)
    with pytest.raises(ProtocolError, match="this_update"):
        CrlMeta.from_proto(crl_pb2.CrlInfo(kind=va_pb2.CERT_KIND_CARD_SIGN, this_update=stamp))
    update = crl_pb2.WatchRevocationsResponse(
        events=[
            crl_pb2.RevocationEvent(
                kind=va_pb2.CERT_KIND_CARD_SIGN,
                serial=b"\x01",
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
                time=stamp,
            )
        ]
    )
    with pytest.raises(ProtocolError, match="time"):
        RevocationUpdate.from_proto(update)


def test_the_widest_times_a_timestamp_may_hold_convert() -> None:
    for seconds in (-62_135_596_800, 253_402_300_799):
        status = va_pb2.CertificateStatus(
            serial=b"\x01", status=va_pb2.CERT_STATUS_GOOD, as_of=Timestamp(seconds=seconds)
        )
        assert CertificateStatus.from_proto(status).as_of is not None
