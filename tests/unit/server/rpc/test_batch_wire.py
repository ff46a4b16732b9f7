"""CheckStream's hand-written batch encoding is byte-for-byte protobuf's own."""

from __future__ import annotations

import random

from jpki_va.core.domain import CertKind, CrlReason, LossCause, Status
from jpki_va.protos import va_pb2
from jpki_va.server.responder.status import Brief, PackedRecord
from jpki_va.server.rpc.batch_wire import ItemError, batch_response
from jpki_va.server.rpc.pb import fill_brief

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


def test_batches_encode_exactly_as_protobuf_does() -> None:
    rng = random.Random(6)
    for _ in range(300):
        items: list[Brief | ItemError] = [
            _error(rng) if rng.random() < 0.15 else _brief(rng) for _ in range(rng.randrange(1, 40))
        ]
        data = batch_response(items)
        assert data == _reference(items)
        assert len(va_pb2.CheckBatchResponse.FromString(data).results) == len(items)


def test_every_status_revoked_or_not_and_a_large_batch() -> None:
    rng = random.Random(7)
    items: list[Brief | ItemError] = []
    for status in Status:
        for _ in range(50):
            brief = _brief(rng)
            items.append(Brief(brief.kind, brief.serial, status, *_rest(brief)))
    assert batch_response(items) == _reference(items)
    big = [_brief(rng) for _ in range(10_000)]  # a full batch (StreamLimits.max_batch)
    assert batch_response(list(big)) == _reference(list(big))


def _rest(brief: Brief) -> tuple[int, int, PackedRecord | None]:
    return brief.as_of, brief.sequence, brief.record
