"""The vocabulary: statuses over time, serial parsing, record encodings."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    Loss,
    LossCause,
    Status,
    StatusRecord,
    parse_record_key,
    record_key,
    serial_from_bytes,
    serial_from_hex,
    serial_hex,
)
from jpki_va.server.snapshot.record_format import (
    FILE_RECORD_SIZE,
    encode_file_record,
    pack_value,
    read_records,
    unpack_value,
    with_loss,
    write_records,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def record(loss: Loss | None = None) -> StatusRecord:
    return StatusRecord(
        kind=CertKind.CARD_SIGN,
        serial=0x1234,
        not_before=T0,
        not_after=T0 + timedelta(days=365),
        partition="131016",
        issuer_key_id=b"\x01" * 20,
        loss=loss,
    )


def test_status_over_time() -> None:
    loss = Loss(T0 + timedelta(days=10), LossCause.HOLDER_REQUEST, CrlReason.UNSPECIFIED)
    lost = record(loss)
    assert lost.status_at(T0 - timedelta(seconds=1)) is Status.NOT_YET_VALID
    assert lost.status_at(T0 + timedelta(days=9)) is Status.GOOD
    assert lost.status_at(T0 + timedelta(days=10)) is Status.REVOKED
    # A loss is final: after expiry the answer is still the loss.
    assert lost.status_at(T0 + timedelta(days=400)) is Status.REVOKED
    assert record().status_at(T0 + timedelta(days=366)) is Status.EXPIRED


@pytest.mark.parametrize(
    ("text", "value"),
    [("0x1234", 0x1234), ("12:34", 0x1234), ("abc", 0xABC), ("00FF", 0xFF)],
)
def test_serial_from_hex(text: str, value: int) -> None:
    assert serial_from_hex(text) == value


@pytest.mark.parametrize("text", ["", "zz", "00", "0x" + "11" * 21])
def test_bad_serials_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="serial"):
        serial_from_hex(text)


def test_serial_bytes_round_trip() -> None:
    assert serial_from_bytes(b"\x00\x01") == 1
    assert serial_hex(0xABCDEF) == "ABCDEF"
    with pytest.raises(ValueError, match="positive"):
        serial_from_bytes(b"\x00")


def test_slugs_round_trip_and_name_the_choices() -> None:
    for kind in CertKind:
        assert CertKind.from_slug(kind.slug) is kind
    for cause in LossCause:
        assert LossCause.from_slug(cause.slug) is cause
    with pytest.raises(ValueError, match="card-sign"):
        CertKind.from_slug("card")


def test_record_key_orders_by_kind_then_numeric_serial() -> None:
    keys = [record_key(CertKind.CARD_AUTH, 1), record_key(CertKind.CARD_SIGN, 2**70)]
    keys += [record_key(CertKind.CARD_SIGN, 255), record_key(CertKind.CARD_SIGN, 256)]
    assert sorted(keys) == [keys[2], keys[3], keys[1], keys[0]]
    assert parse_record_key(keys[1]) == (CertKind.CARD_SIGN, 2**70)
    for kind in CertKind:
        assert parse_record_key(record_key(kind, 7)) == (kind, 7)
    with pytest.raises(ValueError, match="not a valid CertKind"):
        parse_record_key(bytes([5]) + bytes(20))


def test_records_file_round_trip_and_refusals() -> None:
    rows = [
        encode_file_record(
            record_key(CertKind.CARD_SIGN, s), T0, T0 + timedelta(days=1), "131016", 0
        )
        for s in (1, 2, 3)
    ]
    out = io.BytesIO()
    assert write_records(out, rows) == 3
    data = out.getvalue()
    assert [r[0] for r in read_records(data)] == [r[:21] for r in rows]
    with pytest.raises(ValueError, match="truncated"):
        list(read_records(data[:-1]))
    with pytest.raises(ValueError, match="increasing"):
        write_records(io.BytesIO(), [rows[1], rows[0]])
    assert len(rows[0]) == FILE_RECORD_SIZE


def test_index_value_carries_the_loss() -> None:
    key = record_key(CertKind.MOBILE_SIGN, 77)
    value = pack_value(int(T0.timestamp()), int((T0 + timedelta(days=1)).timestamp()), 131016, 0)
    assert unpack_value(key, value, [b"k" * 20]).loss is None
    lost = with_loss(value, int(T0.timestamp()) + 60, LossCause.CARD_CERT_LOST_EFFECT, 5)
    unpacked = unpack_value(key, lost, [b"k" * 20])
    assert unpacked.loss == Loss(
        T0 + timedelta(seconds=60),
        LossCause.CARD_CERT_LOST_EFFECT,
        CrlReason.CESSATION_OF_OPERATION,
    )
    assert unpacked.partition == "131016"
    assert unpacked.kind is CertKind.MOBILE_SIGN
