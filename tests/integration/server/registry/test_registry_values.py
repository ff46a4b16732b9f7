"""Registry values: binary certificate, holder and loss event values round-trip exactly,
and a registry written with the earlier JSON values still opens and reads the same."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lmdb
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import load_der_x509_certificate

from jpki_va.core.domain import CertKind, CrlReason, Loss, LossCause, from_micros, micros
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import CertificateRecord, LossEvent, LossTrigger
from jpki_va.server.registry.codec import (
    CertificateHead,
    certificate_head,
    decode_certificate,
    decode_event,
    encode_certificate,
    encode_certificate_value,
    encode_event,
    encode_holder_value,
    holder_keys,
    link_head,
    link_head_of,
)
from jpki_va.server.registry.transactions import Registry
from tests.support import throwaway_certificate

T0 = datetime(2027, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
# A real certificate body: the registry indexes the key each record certifies.
DER = throwaway_certificate("registry-values").public_bytes(Encoding.DER)


def _record(**changes: object) -> CertificateRecord:
    record = CertificateRecord(
        kind=CertKind.MOBILE_SIGN,
        serial=(1 << 158) + 12345,  # 20 octets: the widest RFC 5280 serial
        issuer_key_id=bytes(range(20)),
        resident_code="01234567890",
        partition="131016",
        holder=Holder("髙橋 𠮷子", "東京都千代田区 1-2-3", "1969-12-31", "女"),
        not_before=T0,
        not_after=T0 + timedelta(days=5 * 365),
        certificate_der=DER,
        loss=Loss(
            T0 + timedelta(days=3, microseconds=7),
            LossCause.CARD_CERT_LOST_EFFECT,
            CrlReason.CESSATION_OF_OPERATION,
        ),
        card_serial=987654321,
        loss_trigger=LossTrigger(CertKind.CARD_SIGN, 987654321, LossCause.RESIDENT_CHANGE),
    )
    return replace(record, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "record",
    [
        _record(),
        _record(loss=None, loss_trigger=None, card_serial=None, kind=CertKind.CARD_AUTH),
        _record(
            issuer_key_id=b"", certificate_der=b"", not_before=datetime(1960, 1, 1, tzinfo=UTC)
        ),
    ],
)
def test_certificate_value_round_trip(record: CertificateRecord) -> None:
    value = encode_certificate(record)
    assert value[0] == 1  # the format byte
    assert decode_certificate(value) == record
    assert certificate_head(value) == CertificateHead.of(record)
    assert link_head(value) == link_head_of(CertificateHead.of(record))
    # The primitive encoder (bulk writers) gives the same bytes.
    loss, trigger = record.loss, record.loss_trigger
    assert value == encode_certificate_value(
        kind=record.kind,
        serial=record.serial,
        issuer_key_id=record.issuer_key_id,
        partition=record.partition.encode(),
        not_before=micros(record.not_before),
        not_after=micros(record.not_after),
        resident_code=record.resident_code.encode(),
        name=record.holder.name.encode(),
        address=record.holder.address.encode(),
        birth_date=record.holder.birth_date.encode(),
        sex=record.holder.sex.encode(),
        certificate_der=record.certificate_der,
        loss_time=0 if loss is None else micros(loss.time),
        cause=0 if loss is None else loss.cause,
        reason=0 if loss is None else loss.reason,
        card_serial=record.card_serial,
        trigger_kind=0 if trigger is None else trigger.kind,
        trigger_serial=0 if trigger is None else trigger.serial,
        trigger_cause=0 if trigger is None else trigger.cause,
    )


def test_times_are_exact_to_the_microsecond() -> None:
    for when in (
        T0,
        datetime(1901, 2, 3, 0, 0, 0, 1, tzinfo=UTC),
        datetime(9999, 1, 1, tzinfo=UTC),
    ):
        assert from_micros(micros(when)) == when


def test_event_and_holder_values_round_trip() -> None:
    event = LossEvent(
        sequence=42,
        kind=CertKind.MOBILE_AUTH,
        serial=(1 << 150) + 3,
        partition="271004",
        issuer_key_id=b"\xaa" * 20,
        loss=Loss(T0, LossCause.CARD_CERT_LOST_EFFECT, CrlReason.CESSATION_OF_OPERATION),
        recorded_at=T0 + timedelta(days=30, microseconds=1),
        trigger=LossTrigger(CertKind.CARD_AUTH, 77, LossCause.HOLDER_REQUEST),
    )
    assert decode_event(42, encode_event(event)) == event
    plain = replace(event, trigger=None, issuer_key_id=b"")
    assert decode_event(42, encode_event(plain)) == plain
    keys = [_record(serial=s).key for s in (5, 1 << 100, 3)]
    assert holder_keys(encode_holder_value(keys)) == keys
    assert holder_keys(encode_holder_value([])) == []


def test_unknown_and_malformed_values_are_refused() -> None:
    value = bytearray(encode_certificate(_record()))
    value[0] = 9
    with pytest.raises(ValueError, match="format 9"):
        decode_certificate(bytes(value))
    with pytest.raises(ValueError, match="does not fit"):
        encode_certificate(_record(partition="9" * 256))
    with pytest.raises(ValueError, match="malformed holder"):
        holder_keys(b"\x01" + bytes(20))


def test_registry_written_as_json_still_opens(tmp_path: Path) -> None:
    """Values as the registry wrote them before the binary format: read, then extended."""
    path = tmp_path / "registry"
    Registry(path).close()  # the databases, as any registry has them
    card = _record(
        kind=CertKind.CARD_SIGN, serial=11, loss=None, loss_trigger=None, card_serial=None
    )
    mobile = _record(serial=12, card_serial=11, loss=None, loss_trigger=None)
    lost = card.loss or Loss(
        T0 + timedelta(days=1), LossCause.RESIDENT_CHANGE, CrlReason.AFFILIATION_CHANGED
    )
    legacy_event = LossEvent(
        1, card.kind, card.serial, card.partition, card.issuer_key_id, lost, T0 + timedelta(days=2)
    )
    card = replace(card, loss=lost)

    def dumps(data: object) -> bytes:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

    env = lmdb.open(str(path), max_dbs=32, subdir=True)
    certs, holders, events, meta = (
        env.open_db(n) for n in (b"certs", b"holders", b"events", b"meta")
    )
    with env.begin(write=True) as txn:
        for record in (card, mobile):
            txn.put(record.key, dumps(record.to_json()), db=certs)
        txn.put(
            card.resident_code.encode(),
            dumps({"certs": [card.key.hex(), mobile.key.hex()]}),
            db=holders,
        )
        txn.put((1).to_bytes(8, "big"), dumps(legacy_event.to_json()), db=events)
        txn.put(b"event", b"1", db=meta)
    env.close()

    registry = Registry(path)
    try:
        with registry.read() as tx:
            assert tx.stored_certificate(CertKind.CARD_SIGN, 11) == card
            assert [r.key for r in tx.holder_certificates(card.resident_code)] == [
                card.key,
                mobile.key,
            ]
            assert list(tx.events_since(0)) == [legacy_event]
            assert dict(tx.certificate_heads()) == {
                card.key: CertificateHead.of(card),
                mobile.key: CertificateHead.of(mobile),
            }
            assert list(tx.holders()) == [(card.resident_code, [card.key, mobile.key])]
            assert list(tx.holder_link_heads()) == [
                [link_head_of(CertificateHead.of(r)) for r in (card, mobile)]
            ]
        # Writes after the change use the binary values; the JSON ones stay readable.
        renewed = _record(
            kind=CertKind.CARD_SIGN, serial=13, loss=None, loss_trigger=None, card_serial=None
        )
        loss = Loss(
            T0 + timedelta(days=4),
            LossCause.CARD_CERT_LOST_EFFECT,
            CrlReason.CESSATION_OF_OPERATION,
        )
        trigger = LossTrigger(CertKind.CARD_SIGN, 11, LossCause.RESIDENT_CHANGE)
        with registry.write() as tx:
            tx.add_certificate(renewed)
            event = tx.record_loss(CertKind.MOBILE_SIGN, 12, loss, trigger=trigger)
        with registry.read() as tx:
            assert [r.key for r in tx.holder_certificates(card.resident_code)] == [
                card.key,
                mobile.key,
                renewed.key,
            ]
            assert tx.stored_certificate(CertKind.MOBILE_SIGN, 12) == replace(
                mobile, loss=loss, loss_trigger=trigger
            )
            assert list(tx.events_since(0)) == [legacy_event, event]
    finally:
        registry.close()


def test_a_registry_made_before_the_public_key_table_gets_it_filled_once(tmp_path: Path) -> None:
    """Issue 15 item 12: the keys of records written before the table are indexed at open."""
    path = tmp_path / "registry"
    other_der = throwaway_certificate("registry-values-other").public_bytes(Encoding.DER)
    card = _record(
        kind=CertKind.CARD_SIGN, serial=21, loss=None, loss_trigger=None, card_serial=None
    )
    # Written when the same key could still be certified twice: both are indexed.
    twin = replace(card, kind=CertKind.CARD_AUTH, resident_code="01234567891")
    other = replace(card, serial=22, certificate_der=other_der)
    bulk = replace(card, serial=23, certificate_der=b"")  # a bulk record, without a body
    damaged = replace(card, serial=25, certificate_der=b"\x30\x03\x02\x01\x01")
    env = lmdb.open(str(path), max_dbs=32, subdir=True)
    certs = env.open_db(b"certs")
    with env.begin(write=True) as txn:
        for record in (card, twin, other, bulk, damaged):
            txn.put(record.key, encode_certificate(record), db=certs)
    env.close()

    def keys_of(registry: Registry, der: bytes) -> list[bytes]:
        # The key's identity: SHA-256 of its DER SubjectPublicKeyInfo.
        spki = (
            load_der_x509_certificate(der)
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        with registry.read() as tx:
            return [r.key for r in tx.key_certificates(hashlib.sha256(spki).digest())]

    registry = Registry(path)  # a damaged body is logged and left out, not fatal
    try:
        assert sorted(keys_of(registry, DER)) == sorted([card.key, twin.key])
        assert keys_of(registry, other_der) == [other.key]
        with registry.read() as tx:
            assert tx.meta("public_keys_indexed") is not None  # done, in meta
        # Issuance keeps the table: the new record is indexed in its own transaction.
        later = replace(other, serial=24)
        with registry.write() as tx:
            tx.add_certificate(later)
        assert keys_of(registry, other_der) == [other.key, later.key]
    finally:
        registry.close()
    # Opened again: done once, nothing indexed twice.
    registry = Registry(path)
    try:
        assert keys_of(registry, other_der) == [other.key, later.key]
        with registry.write() as tx:
            assert tx.index_public_keys() == 0
    finally:
        registry.close()
