"""CheckStream's hand-written batch encoding is byte-for-byte protobuf's own, and its
compiled twin (rpc/_batch_wire.pyx) byte-for-byte the pure-Python reference.

Every encoder is checked against the generated code: the reference
(`py_batch_response`, `py_packed_response`) and the compiled module called directly,
so a fallback to the reference cannot hide a compiled bug, and the compiled module
must be present in the installed tree (a broken build fails here, not silently).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from jpki_va.core.domain import CertKind, CrlReason, LossCause, Status, record_key
from jpki_va.protos import va_pb2
from jpki_va.server.responder.status import (
    Brief,
    PackedBatch,
    PackedRecord,
    packed_briefs,
    tally_labels,
)
from jpki_va.server.rpc import _batch_wire, batch_wire
from jpki_va.server.rpc.batch_wire import (
    ItemError,
    PlainBatch,
    Slot,
    batch_request,
    batch_response,
    check_request,
    check_response,
    compiled_packed_response,
    ocsp_response,
    packed_response,
    plain_keys,
    py_batch_response,
    py_check_response,
    py_packed_response,
)
from jpki_va.server.rpc.pb import fill_brief, plain_kind_serial
from jpki_va.server.rpc.request_decoding import Undecodable, _decoder
from jpki_va.server.snapshot.record_format import pack_value

Encoder = Callable[[list[Brief | ItemError]], bytes]


def _compiled(items: list[Brief | ItemError]) -> bytes:
    """The compiled encoder alone: an item it hands back to Python fails the test's
    comparison only if the Python answer differs (it is the reference's own)."""
    return _batch_wire.results_bytes(list(items), ItemError, batch_wire._item)


ENCODERS = pytest.mark.parametrize(
    "encode", [py_batch_response, _compiled, batch_response], ids=["python", "compiled", "used"]
)

_TIMES = (
    0,
    1,
    999_999,
    1_000_000,
    -1,
    -1_000_001,
    1_767_225_600_000_000,
    253_402_300_799_999_999,
    *(s * 1_000_000 for s in (0x0FFF_FFFF, 0x1000_0000, 0x7_FFFF_FFFF, 0x8_0000_0000)),
)


def _time(rng: random.Random) -> int:
    if rng.random() < 0.3:
        return rng.choice(_TIMES)
    micros = rng.randrange(-(10**15), 10**17)
    return micros - micros % 1_000_000 if rng.random() < 0.5 else micros


def _brief(rng: random.Random) -> Brief:
    record = None
    if rng.random() < 0.8:
        lost = rng.random() < 0.5
        record = PackedRecord(
            _time(rng),
            _time(rng),
            rng.choice(("", "000001", "131016", "472158")),
            rng.choice((b"", bytes(20), rng.randbytes(20), rng.randbytes(200))),
            _time(rng) if lost else None,
            rng.choice([0, *map(int, LossCause)]) if lost else 0,
            rng.choice([int(r) for r in CrlReason]) if lost else 0,
        )
    return Brief(
        rng.choice((None, *CertKind)),
        rng.choice((1, 127, 128, 2**64, rng.randrange(1, 2**160))),
        rng.choice(list(Status)),
        _time(rng),
        rng.choice((0, 1, 127, 128, 2**40, 2**64 - 1)),
        record,
    )


def _error(rng: random.Random) -> ItemError:
    text = rng.choice(
        (
            "",
            "serial must be 1 to 20 octets, got 21",
            "PERMISSION_DENIED: 署名用電子証明書の失効情報は提供できません",
            "x" * 127,
            "y" * 128,
            "z" * 20_000,
        )
    )
    return ItemError(rng.choice(list(va_pb2.CheckErrorCode.values())), text)


def _reference(items: list[Brief | ItemError]) -> bytes:
    response = va_pb2.CheckBatchResponse()
    for item in items:
        if isinstance(item, ItemError):
            response.results.add(error=item.text, error_code=item.code)
        else:
            fill_brief(response.results.add().status, item)
    return response.SerializeToString()


@ENCODERS
def test_batches_encode_exactly_as_protobuf_does(encode: Encoder) -> None:
    rng = random.Random(6)
    for _ in range(300):
        items: list[Brief | ItemError] = [
            _error(rng) if rng.random() < 0.15 else _brief(rng) for _ in range(rng.randrange(1, 40))
        ]
        data = encode(items)
        assert data == _reference(items)
        assert len(va_pb2.CheckBatchResponse.FromString(data).results) == len(items)


@ENCODERS
def test_every_status_revoked_or_not_and_a_large_batch(encode: Encoder) -> None:
    rng = random.Random(7)
    items: list[Brief | ItemError] = []
    for status in Status:
        for _ in range(50):
            brief = _brief(rng)
            items.append(Brief(brief.kind, brief.serial, status, *_rest(brief)))
    assert encode(items) == _reference(items)
    big: list[Brief | ItemError] = [_brief(rng) for _ in range(10_000)]  # StreamLimits.max_batch
    assert encode(big) == _reference(big)
    assert encode([]) == b""


def _rest(brief: Brief) -> tuple[int, int, PackedRecord | None]:
    return brief.as_of, brief.sequence, brief.record


# The packed path: index values straight to the wire ---------------------------------

_INT64 = (-(2**63), 2**63 - 1)
_SECONDS = (0, 1, -1, 0x0FFF_FFFF, 0x1000_0000, 0x7_FFFF_FFFF, 0x8_0000_0000, 1_767_225_600)
_IDS = [bytes(20), b"", bytes(range(20)), b"\x01" * 200]


def _seconds(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(_SECONDS)
    if roll < 0.302:  # beyond what the compiled code encodes: the reference answers
        return rng.choice(_INT64)
    return rng.randrange(1_500_000_000, 2_200_000_000)


def _key(rng: random.Random) -> bytes:
    kind = rng.choice(list(CertKind))
    serial = rng.choice((1, 127, 128, 256, 2**64, 2**159, 2**160 - 1, rng.randrange(1, 2**160)))
    return record_key(kind, serial)


def _value(rng: random.Random) -> bytes | None:
    if rng.random() < 0.2:
        return None  # a serial the index does not hold: UNKNOWN
    cause = rng.choice([0, 0, *map(int, LossCause)])
    return pack_value(
        _seconds(rng),
        _seconds(rng),
        rng.choice((0, 1, 131016, 472158, 999_999, 1_000_000, 2**32 - 1)),
        rng.randrange(len(_IDS)),
        _seconds(rng) if cause else 0,
        cause,
        rng.choice([int(r) for r in CrlReason]) if cause else 0,
    )


def _batch(rng: random.Random, size: int) -> PackedBatch:
    when = rng.choice((1_767_225_600_123_456, 1_767_225_600_000_000, 0, -1, _time(rng)))
    return PackedBatch(
        [_key(rng) for _ in range(size)],
        [_value(rng) for _ in range(size)],
        _IDS,
        rng.choice((0, 1, 127, 128, 2**40, 2**64 - 1)),
        when,
    )


def _slots(rng: random.Random, size: int) -> list[Slot] | None:
    if rng.random() < 0.4:
        return None
    slots: list[Slot] = []
    for position in range(size):
        roll = rng.random()
        if roll < 0.1:  # an entitlement refusal, a malformed item
            slots.append(_error(rng))
        elif roll < 0.15:  # an issuer we do not answer for
            brief = _brief(rng)
            slots.append(Brief(None, brief.serial, Status.UNKNOWN, *_rest(brief)[:2], None))
        slots.append(position)
    return slots


def _expected(slots: Sequence[Slot] | None, batch: PackedBatch) -> bytes:
    briefs = packed_briefs(batch)
    if slots is None:
        return _reference(list(briefs))
    return _reference([briefs[s] if isinstance(s, int) else s for s in slots])


def _labels(slots: Sequence[Slot] | None, batch: PackedBatch) -> dict[tuple[str, str], int]:
    briefs = packed_briefs(batch)
    read = briefs if slots is None else [briefs[s] for s in slots if isinstance(s, int)]
    out: dict[tuple[str, str], int] = {}
    for brief in read:
        out[brief.labels] = out.get(brief.labels, 0) + 1
    return out


def test_packed_batches_encode_as_the_reference_and_protobuf_do() -> None:
    rng = random.Random(8)
    declined = 0
    for _ in range(400):
        size = rng.randrange(0, 40)
        batch, slots = _batch(rng, size), _slots(rng, size)
        expected = _expected(slots, batch)
        labels = _labels(slots, batch)
        reference, reference_tally = py_packed_response(slots, batch)
        assert reference == expected
        assert tally_labels(reference_tally) == labels
        compiled, tally = compiled_packed_response(slots, batch)
        if compiled is None:  # a time beyond 64-bit microseconds: left to the reference
            declined += 1
        else:
            assert compiled == expected
            assert tally_labels(tally) == labels
        assert packed_response(slots, batch) == (expected, reference_tally)
    assert 0 < declined < 100  # both branches ran


# in effect, not yet valid, expired (seconds from `now`)
_VALIDITIES = ((-9, 9), (5, 9), (-9, -5))


def test_packed_edge_cases() -> None:
    """Every kind, status, cause and reason; unknown serials; refusals of every code;
    the empty batch and a full one."""
    rng = random.Random(9)
    now = 1_767_225_600  # seconds
    keys: list[bytes] = []
    values: list[bytes | None] = []
    for kind in CertKind:
        for serial in (1, 2**64, 2**160 - 1):
            keys.append(record_key(kind, serial))
            values.append(None)
            for not_before, not_after in _VALIDITIES:
                keys.append(record_key(kind, serial))
                values.append(pack_value(now + not_before, now + not_after, 131016, 0))
            for cause in LossCause:
                for reason in CrlReason:
                    for lost in (now - 1, now, now + 1):  # a loss later than now: not yet
                        keys.append(record_key(kind, serial))
                        values.append(pack_value(now - 10, now + 10, 1, 2, lost, cause, reason))
    batch = PackedBatch(keys, values, _IDS, 42, now * 1_000_000)
    errors: list[Slot] = [
        ItemError(code, f"{va_pb2.CheckErrorCode.Name(code)}: no")
        for code in va_pb2.CheckErrorCode.values()
    ]
    for slots in (None, [*errors, *range(len(keys)), *errors]):
        compiled, tally = compiled_packed_response(slots, batch)
        assert compiled == _expected(slots, batch)
        assert tally_labels(tally) == _labels(slots, batch)
        assert (compiled, tally) == py_packed_response(slots, batch)
    statuses = {brief.status for brief in packed_briefs(batch)}
    assert statuses == set(Status)
    empty = PackedBatch([], [], _IDS, 1, now)
    assert compiled_packed_response(None, empty) == (b"", {})
    full = _batch(rng, 10_000)  # StreamLimits.max_batch
    full.values = [_value(rng) if rng.random() < 0.5 else None for _ in full.keys]
    full.values = [v if v is None else pack_value(now, now + 9, 1, 0) for v in full.values]
    assert compiled_packed_response(None, full)[0] == _expected(None, full)


def test_a_packed_slot_or_value_out_of_range_is_an_error_not_a_crash() -> None:
    batch = PackedBatch([record_key(CertKind.CARD_SIGN, 1)], [None], _IDS, 1, 0)
    with pytest.raises(IndexError):
        compiled_packed_response([1], batch)
    with pytest.raises(IndexError):
        compiled_packed_response([-1], batch)
    bad_ordinal = PackedBatch(batch.keys, [pack_value(1, 2, 3, len(_IDS))], _IDS, 1, 0)
    with pytest.raises(IndexError):
        compiled_packed_response(None, bad_ordinal)
    with pytest.raises(IndexError):
        py_packed_response(None, bad_ordinal)
    with pytest.raises(ValueError, match="a value for each key"):
        compiled_packed_response(None, PackedBatch(batch.keys, [], _IDS, 1, 0))


def test_a_one_key_batch_is_unary_checks_response() -> None:
    """`check_response`: protobuf's CheckResponse of the key's brief, byte for byte,
    whatever the length of the status (one- and two-byte length varints); its compiled
    twin (`check_bytes`, called directly) the reference's bytes and label code, a
    status longer than its stack start included (a 1,000-octet issuer key id)."""
    rng = random.Random(10)
    ids = [*_IDS, b"\x02" * 1000]
    declined = 0
    for _ in range(400):
        batch = _batch(rng, 1)
        batch.issuer_key_ids = ids
        if batch.values[0] is not None and rng.random() < 0.2:
            batch.values[0] = pack_value(1, 2**40, 7, len(ids) - 1)
        brief = packed_briefs(batch)[0]
        expected = va_pb2.CheckResponse()
        fill_brief(expected.status, brief)
        reference, tally = py_check_response(batch)
        assert reference == expected.SerializeToString()
        assert tally_labels(tally) == {brief.labels: 1}
        assert check_response(batch) == (reference, tally)
        compiled = _batch_wire.check_bytes(
            batch.keys[0], batch.values[0], ids, batch.when, batch.sequence
        )
        if compiled is None:  # a time beyond 64-bit microseconds: left to the reference
            declined += 1
        else:
            assert compiled == (reference, *tally)
    assert 0 < declined < 100  # both branches ran
    for check in (check_response, py_check_response):
        with pytest.raises(ValueError, match="one key, not 2"):
            check(_batch(rng, 2))


def test_a_one_key_value_out_of_range_is_an_error_not_a_crash() -> None:
    key = record_key(CertKind.CARD_SIGN, 1)
    with pytest.raises(IndexError):
        _batch_wire.check_bytes(key, pack_value(1, 2, 3, len(_IDS)), _IDS, 0, 1)
    with pytest.raises(ValueError, match="21 bytes"):
        _batch_wire.check_bytes(key[:20], None, _IDS, 0, 1)
    assert _batch_wire.check_bytes(key, b"short", _IDS, 0, 1) is None  # the reference's
    assert _batch_wire.check_bytes(key, None, _IDS, 0, 2**64) is None  # beyond a varint


def test_the_installed_tree_uses_the_compiled_encoder() -> None:
    """`./tasks setup` (and the image's install) builds the extension; were the build
    broken, the import above or this test fails instead of the reference serving."""
    assert batch_wire.COMPILED
    assert Path(_batch_wire.__file__).suffix == ".so"
    assert vars(batch_wire)["_batch_wire"] is _batch_wire


# Requests: the plain items read from a batch's bytes -------------------------------


def _request(rng: random.Random) -> va_pb2.CheckRequest:
    """A request of any form: mostly plain, and every way of not being plain."""
    kind = rng.choice((1, 2, 3, 4, 1, 2, 0, 5, 99, -1))
    serial = rng.choice(
        (
            rng.randbytes(rng.randrange(1, 21)),
            b"\x00" + rng.randbytes(8),
            b"\x00" * rng.randrange(0, 22),
            rng.randbytes(21),
            b"",
            b"\x01",
        )
    )
    request = va_pb2.CheckRequest(
        cert=va_pb2.CertRef(kind_serial=va_pb2.KindSerial(kind=kind, serial=serial))  # type: ignore[arg-type]
    )
    roll = rng.random()
    if roll < 0.05:
        request.as_of.FromMicroseconds(rng.randrange(0, 2**50))
    elif roll < 0.08:
        request.cert.certificate_der = rng.randbytes(30)
    elif roll < 0.1:
        request.cert.cert_id.serial = serial
    elif roll < 0.12:
        request = va_pb2.CheckRequest()
    return request


def _plain_reference(request: va_pb2.CheckRequest) -> bytes | None:
    kind, serial = plain_kind_serial(request)
    return None if serial == 0 else record_key(kind, serial)


def test_plain_keys_read_from_bytes_are_the_parsed_requests_own() -> None:
    rng = random.Random(10)
    taken = 0
    for _ in range(300):
        requests = [_request(rng) for _ in range(rng.randrange(0, 30))]
        raw = va_pb2.CheckBatchRequest(requests=requests).SerializeToString()
        counts = [0] * 5
        keys = _batch_wire.plain_keys(raw, counts)
        assert keys is not None and len(keys) == len(requests)
        expected = [_plain_reference(request) for request in requests]
        assert keys == expected  # protobuf's own encoding: every plain item is read
        assert counts[1:] == [sum(1 for k in keys if k and k[0] == n) for n in range(1, 5)]
        taken += sum(key is not None for key in keys)
        whole = plain_keys(raw)
        if None in expected:
            assert whole is None
        else:
            assert whole == (expected, counts)
    assert taken > 1000


def test_batch_request_reads_the_usual_batch_as_keys_and_parses_any_other() -> None:
    """CheckStream's deserializer: a batch of plain requests arrives as its keys and
    counts (the bytes kept, and parsing them gives the message); any other batch is
    protobuf's parse, and bytes that are no CheckBatchRequest raise as its parse does."""
    rng = random.Random(12)
    plain_seen = parsed_seen = 0
    for _ in range(300):
        requests = [_request(rng) for _ in range(rng.randrange(0, 6))]
        raw = va_pb2.CheckBatchRequest(requests=requests).SerializeToString()
        read = batch_request(raw)
        message = va_pb2.CheckBatchRequest.FromString(raw)
        if isinstance(read, PlainBatch):
            plain_seen += 1
            assert (read.keys, read.per_kind) == plain_keys(raw)
            assert read.keys == [_plain_reference(request) for request in requests]
            assert read.raw == raw and read.parsed() == message
        else:
            parsed_seen += 1
            assert read == message
            assert any(_plain_reference(request) is None for request in requests)
    assert plain_seen > 20 and parsed_seen > 20
    assert batch_request(b"") == PlainBatch(b"", [], [0] * 5)  # empty: the servicer refuses it
    truncated = b"\x0a\x05ab"  # a request that claims 5 bytes and has 2
    with pytest.raises(DecodeError):
        va_pb2.CheckBatchRequest.FromString(truncated)  # the reference raises ...
    with pytest.raises(DecodeError):
        batch_request(truncated)  # ... and so does the reader


def test_check_request_reads_the_usual_request_as_its_key_and_parses_any_other() -> None:
    """Unary Check's deserializer: a plain request arrives as its record key, read from
    its bytes as a batch's items are; any other is protobuf's parse, and so is a plain
    request protobuf would write otherwise; bytes that are no CheckRequest raise."""
    rng = random.Random(13)
    plain_seen = parsed_seen = 0
    for _ in range(500):
        request = _request(rng)
        raw = request.SerializeToString()
        read = check_request(raw)
        expected = _plain_reference(request)
        if expected is None:
            parsed_seen += 1
            assert read == request
        else:
            plain_seen += 1
            assert read == expected == _batch_wire.plain_key(raw)
    assert plain_seen > 100 and parsed_seen > 100
    for odd in (
        b"\x0a\x09\x0a\x07\x12\x03\x01\x02\x03\x08\x01",  # serial before kind
        b"\x0a\x0b\x0a\x09\x08\x01\x12\x03\x01\x02\x03\x18\x01",  # an unknown field
        b"\x0a\x0a\x0a\x08\x08\x81\x00\x12\x03\x01\x02\x03",  # kind as a long varint
    ):
        parsed = va_pb2.CheckRequest.FromString(odd)
        assert check_request(odd) == parsed and _plain_reference(parsed) is not None
    with pytest.raises(DecodeError):
        check_request(b"\x0a\x05ab")  # a field that claims 5 bytes and has 2
    assert check_request(b"") == va_pb2.CheckRequest()  # no certificate: `_target` refuses it


def test_plain_keys_leave_every_other_encoding_to_protobuf() -> None:
    """Bytes protobuf reads as the same request but writes otherwise (fields out of
    order, unknown fields, a repeated field, long varints) are not read here, and
    garbage is not a crash."""
    plain = b"\x0a\x0b\x0a\x09\x0a\x07\x08\x01\x12\x03\x01\x02\x03"
    assert _batch_wire.plain_keys(plain, [0] * 5) == [record_key(CertKind.CARD_SIGN, 0x10203)]
    for odd in (
        b"\x0a\x0b\x0a\x09\x0a\x07\x12\x03\x01\x02\x03\x08\x01",  # serial before kind
        b"\x0a\x0d\x0a\x0b\x0a\x09\x08\x01\x12\x03\x01\x02\x03\x18\x01",  # an unknown field
        b"\x0a\x0c\x0a\x0a\x0a\x08\x08\x81\x00\x12\x03\x01\x02\x03",  # kind as a long varint
        b"\x0a\x0d\x0a\x0b\x0a\x09\x08\x02\x08\x01\x12\x03\x01\x02\x03",  # kind twice
    ):
        assert _batch_wire.plain_keys(odd, [0] * 5) == [None]
        parsed = va_pb2.CheckBatchRequest.FromString(odd)
        assert len(parsed.requests) == 1  # protobuf reads it: `_batch` does, in Python
    assert _batch_wire.plain_keys(b"\x12\x00", [0] * 5) is None  # unknown batch field
    rng = random.Random(11)
    for _ in range(2000):
        garbage = rng.randbytes(rng.randrange(0, 40))
        _batch_wire.plain_keys(plain + garbage, [0] * 5)
        _batch_wire.plain_keys(b"\x0a" + garbage, [0] * 5)


def test_check_requests_decoder_reads_the_usual_request_in_one_compiled_call() -> None:
    """What the server runs as Check's deserializer: request_decoding's decoder, which
    never raises, handed to the reader (`or_else`). The usual request is then one
    compiled call, with no frame of ours around it; every request reads as
    `check_request` reads it, and bytes that are no CheckRequest are `Undecodable`."""
    decode = _decoder(check_request)
    assert isinstance(decode, partial) and decode.func is _batch_wire.plain_key_or
    rng = random.Random(17)
    for _ in range(500):
        raw = _request(rng).SerializeToString()
        assert decode(raw) == check_request(raw)
    assert decode(b"\x0a\x05ab") == Undecodable("DecodeError")
    assert decode(b"") == va_pb2.CheckRequest()


def test_ocsp_response_is_protobufs_own_encoding() -> None:
    """gRPC Ocsp's answer, written from a reply's two parts, is byte for byte what
    `OcspResponse(der=body + certs).SerializeToString()` writes, at every length a
    varint changes size and at random ones (an empty DER included: field left out)."""
    rng = random.Random(19)
    sizes = [0, 1, 127, 128, 129, 16_383, 16_384, 16_385, 2_097_152]
    sizes += [rng.randrange(0, 4_000) for _ in range(300)]
    for size in sizes:
        der = rng.randbytes(size)
        cut = rng.randrange(0, size + 1)
        expected = va_pb2.OcspResponse(der=der).SerializeToString()
        assert ocsp_response(der[:cut], der[cut:]) == expected, size
