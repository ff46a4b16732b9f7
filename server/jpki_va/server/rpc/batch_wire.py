"""CheckStream's batch response as wire bytes, written without a protobuf message; and
its usual batch request read from wire bytes without one (`batch_request`).

A CheckStream batch answers thousands of statuses; filling a `CheckBatchResponse`
field by field costs more Python per status than finding the status does. This
module writes the same bytes directly: protobuf's encoding of `CheckBatchResponse`
(va.proto), fields in number order and proto3 defaults left out, exactly as
`SerializeToString` writes them (tests/test_batch_wire.py compares the two on many
cases). What repeats across statuses (a partition with its issuer, the batch's
instant and index sequence) is encoded once and reused; a certificate's own times
are not (a cache of them would mostly miss at national scale).

Only `CheckBatchResponse` is written here, with unary Check's `CheckResponse` (its
one result's body) and `OcspResponse` (one bytes field); any change to their
messages in va.proto must be mirrored here (the byte-for-byte tests fail until it is).

This is the reference. `_batch_wire.pyx` is its compiled twin, built at install
(setup.py) and used when it imports: `batch_response` and `packed_response` below are
then the compiled ones, and `COMPILED` says so. The tests compare the two byte for
byte, and one fails when the installed tree lacks the compiled module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from jpki_va.core.domain import CertKind, Status
from jpki_va.protos import va_pb2
from jpki_va.server.responder.status import Brief, PackedBatch, label_code, packed_briefs

_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as their 64-bit two's complement (int64)."""
    value &= _U64
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def _delimited(tag: bytes, body: bytes) -> bytes:
    size = len(body)
    return tag + (_SMALL[size] if size < 0x80 else _varint(size)) + body


# Field keys: (field number << 3) | wire type (0 varint, 2 length-delimited).
_KIND = b"\x08"
_SERIAL = b"\x12"
_STATUS = b"\x18"
_NOT_BEFORE = b"\x22"
_NOT_AFTER = b"\x2a"
_REVOCATION = b"\x32"
_PARTITION = b"\x3a"
_ISSUER_KEY_ID = b"\x42"
_AS_OF = b"\x4a"
_INDEX_SEQUENCE = b"\x50"
_RESULT_STATUS = b"\x0a"  # CheckResult.status
_RESULT_ERROR = b"\x12"  # CheckResult.error
_RESULT_ERROR_CODE = b"\x18"  # CheckResult.error_code
_RESULTS = b"\x0a"  # CheckBatchResponse.results


def _stamp(tag: bytes, micros: int) -> bytes:
    """A Timestamp field from microseconds since the epoch (present even when zero)."""
    if _FIRST <= micros < _LAST and not micros % 1_000_000:  # the index's times
        return tag + b"\x06\x08" + _spread(micros)
    seconds, micro = divmod(micros, 1_000_000)
    body = b""
    if seconds:
        body = b"\x08" + _varint(seconds)
    if micro:
        body += b"\x10" + _varint(micro * 1000)
    return _delimited(tag, body)


_FIRST, _LAST = 0x1000_0000 * 1_000_000, 0x8_0000_0000 * 1_000_000  # 1978 to 3058


def _spread(micros: int) -> bytes:
    """The five varint bytes of a whole number of seconds from _FIRST to before _LAST."""
    seconds = micros // 1_000_000
    return (
        0x8080_8080
        | (seconds & 0x7F)
        | ((seconds << 1) & 0x7F00)
        | ((seconds << 2) & 0x7F_0000)
        | ((seconds << 3) & 0x7F00_0000)
        | ((seconds << 4) & 0x7F_0000_0000)
    ).to_bytes(5, "little")


@lru_cache(maxsize=1 << 14)
def _place(partition: str, issuer_key_id: bytes) -> bytes:
    """partition and issuer_key_id: few distinct pairs (municipalities x generations)."""
    out = b""
    if partition:
        out = _delimited(_PARTITION, partition.encode())
    if issuer_key_id:
        out += _delimited(_ISSUER_KEY_ID, issuer_key_id)
    return out


@lru_cache(maxsize=1 << 10)
def _tail(as_of: int, sequence: int) -> bytes:
    """as_of and index_sequence: usually one pair for a whole batch."""
    out = _stamp(_AS_OF, as_of)
    if sequence:
        out += _INDEX_SEQUENCE + _varint(sequence)
    return out


def _revocation(lost_at: int, cause: int, reason: int) -> bytes:
    body = _stamp(b"\x0a", lost_at)
    if cause:
        body += b"\x10" + _varint(cause)
    if reason:
        body += b"\x18" + _varint(reason)
    return _delimited(_REVOCATION, body)


_KINDS: dict[CertKind | None, bytes] = {None: b""}
_KINDS.update({kind: _KIND + _varint(kind) for kind in CertKind})
_STATUSES = {status: _STATUS + _varint(status) for status in Status}


def status_bytes(brief: Brief) -> bytes:
    """One CertificateStatus, as `fill_brief` would fill it and protobuf serialize it."""
    kind, serial, status, as_of, sequence, record = brief
    raw = serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big")
    size = len(raw)
    head = (
        _KINDS[kind]
        + _SERIAL
        + (_SMALL[size] if size < 0x80 else _varint(size))
        + raw
        + _STATUSES[status]
    )
    if record is None:
        return head + _tail(as_of, sequence)
    not_before, not_after, partition, issuer_key_id, lost_at, cause, reason = record
    validity = _stamp(_NOT_BEFORE, not_before) + _stamp(_NOT_AFTER, not_after)
    if status is Status.REVOKED and lost_at is not None:
        validity += _revocation(lost_at, cause, reason)
    return head + validity + _place(partition, issuer_key_id) + _tail(as_of, sequence)


# The usual status in one formatting: both results keys and lengths (a status under
# 126 bytes), kind, serial, status, the two validity times (whole seconds, five-byte
# varints), the revocation if any, partition with issuer, as_of with sequence.
_USUAL = b"\x0a%c\x0a%c%b\x12%c%b%b\x22\x06\x08%b\x2a\x06\x08%b%b%b%b"


def _result(brief: Brief) -> bytes:
    """One `results` entry holding `brief`'s status."""
    kind, serial, status, as_of, sequence, record = brief
    if record is not None:
        not_before, not_after, partition, issuer_key_id, lost_at, cause, reason = record
        if (
            _FIRST <= not_before < _LAST
            and _FIRST <= not_after < _LAST
            and not not_before % 1_000_000
            and not not_after % 1_000_000
        ):
            raw = serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big")
            kind_field = _KINDS[kind]
            status_field = _STATUSES[status]
            revocation = (
                _revocation(lost_at, cause, reason)
                if status is Status.REVOKED and lost_at is not None
                else b""
            )
            place = _place(partition, issuer_key_id)
            tail = _tail(as_of, sequence)
            size = (
                len(kind_field)
                + len(raw)
                + len(status_field)
                + len(revocation)
                + len(place)
                + len(tail)
                + 18  # serial key and length, two times of 8 bytes each
            )
            if size < 126:
                return _USUAL % (
                    size + 2,
                    size,
                    kind_field,
                    len(raw),
                    raw,
                    status_field,
                    _spread(not_before),
                    _spread(not_after),
                    revocation,
                    place,
                    tail,
                )
    return _delimited(_RESULTS, _delimited(_RESULT_STATUS, status_bytes(brief)))


@dataclass(frozen=True, slots=True)
class ItemError:
    """A refused item of a batch: its CheckErrorCode value and the text for people."""

    code: int
    text: str


def _error(error: ItemError) -> bytes:
    body = _delimited(_RESULT_ERROR, error.text.encode())
    if error.code:
        body += _RESULT_ERROR_CODE + _varint(error.code)
    return _delimited(_RESULTS, body)


def _item(result: Brief | ItemError) -> bytes:
    """One `results` entry."""
    if isinstance(result, ItemError):
        return _error(result)
    return _result(result)


def py_batch_response(results: Sequence[Brief | ItemError]) -> bytes:
    """A serialized CheckBatchResponse: a status per Brief, an error per ItemError."""
    return b"".join(map(_item, results))


# A result slot of a packed batch: the position of its key and value, or an answer
# made without the index (an unknown issuer's Brief, a refusal).
Slot = int | Brief | ItemError


def py_packed_response(
    slots: Sequence[Slot] | None, batch: PackedBatch
) -> tuple[bytes, dict[int, int]]:
    """(A serialized CheckBatchResponse, its tally) for a batch read as index values.

    `slots`: None for one result per key in order. The tally counts the answers from
    values by label code (`status * 256 + cause`, cause 0 unless revoked).
    """
    briefs = packed_briefs(batch)
    results = (
        briefs if slots is None else [s if not isinstance(s, int) else briefs[s] for s in slots]
    )
    tally: dict[int, int] = {}
    for brief in briefs if slots is None else (briefs[s] for s in slots if isinstance(s, int)):
        record = brief.record
        code = label_code(brief.status, 0 if record is None else record.cause)
        tally[code] = tally.get(code, 0) + 1
    return py_batch_response(results), tally


try:
    from jpki_va.server.rpc import _batch_wire
except ImportError:  # no compiler at install: the reference serves
    _batch_wire = None  # type: ignore[assignment]

COMPILED = _batch_wire is not None


def batch_response(results: Sequence[Brief | ItemError]) -> bytes:
    """`py_batch_response`, compiled when it can be."""
    if _batch_wire is None:
        return py_batch_response(results)
    return _batch_wire.results_bytes(list(results), ItemError, _item)


def compiled_packed_response(
    slots: Sequence[Slot] | None, batch: PackedBatch
) -> tuple[bytes | None, dict[int, int]]:
    """`py_packed_response` by the compiled module; None for bytes: it leaves the batch
    to the reference (a value beyond 64-bit microseconds)."""
    tally: dict[int, int] = {}
    data = _batch_wire.packed_bytes(
        None if slots is None else list(slots),
        batch.keys,
        batch.values,
        batch.issuer_key_ids,
        batch.when,
        batch.sequence,
        ItemError,
        _item,
        tally,
    )
    return data, tally


def packed_response(
    slots: Sequence[Slot] | None, batch: PackedBatch
) -> tuple[bytes, dict[int, int]]:
    """`py_packed_response`, compiled when it can be."""
    if _batch_wire is not None:
        data, tally = compiled_packed_response(slots, batch)
        if data is not None:
            return data, tally
    return py_packed_response(slots, batch)


def check_response(batch: PackedBatch) -> tuple[bytes, dict[int, int]]:
    """(A serialized CheckResponse, its tally) for a batch of one key: unary Check's
    usual answer, written as CheckStream writes its statuses (`py_check_response`,
    compiled when it can be)."""
    if len(batch.keys) != 1:
        raise ValueError(f"a CheckResponse answers one key, not {len(batch.keys)}")
    if _batch_wire is not None:
        done = _batch_wire.check_bytes(
            batch.keys[0], batch.values[0], batch.issuer_key_ids, batch.when, batch.sequence
        )
        if done is not None:
            data, code = done
            return data, {code: 1}
    return py_check_response(batch)


def py_check_response(batch: PackedBatch) -> tuple[bytes, dict[int, int]]:
    """The reference `check_response` follows: the batch's one result, less its frame.

    `CheckResult.status` and `CheckResponse.status` are both field 1, so the one
    result's body (the batch response less its `results` key and length) is the
    CheckResponse.
    """
    if len(batch.keys) != 1:
        raise ValueError(f"a CheckResponse answers one key, not {len(batch.keys)}")
    data, tally = py_packed_response(None, batch)
    start = 1  # past the `results` key
    while data[start] & 0x80:  # the result's length, a varint
        start += 1
    return data[start + 1 :], tally


#: `OcspResponse.der`'s key (field 1, length-delimited): the message's one field.
_OCSP_DER = b"\x0a"
#: A response's length as a varint: a C call once known (responses come in few sizes).
_der_length = lru_cache(maxsize=1024)(_varint)


def ocsp_response(body: bytes, certs: bytes) -> bytes:
    """A serialized OcspResponse whose `der` is `body + certs` (an OcspReply's two
    parts), as `SerializeToString` writes it: the parts are copied once, where a
    message copied the joined DER in and serialized it out again."""
    size = len(body) + len(certs)
    if not size:
        return b""  # proto3 leaves an empty field out
    return b"".join((_OCSP_DER, _der_length(size), body, certs))


def plain_keys(raw: bytes) -> tuple[list[bytes], list[int]] | None:
    """(The record key of each request, the count per kind value) of a serialized
    CheckBatchRequest whose every request is plain (`pb.plain_kind_serial` reads a
    kind and a nonzero serial from it); None when one is not, or without the compiled
    module (then each parsed request is read in Python, which is the reference)."""
    if _batch_wire is None:
        return None
    counts = [0] * 5
    keys = _batch_wire.plain_keys(raw, counts)
    if keys is None or None in keys:
        return None
    return keys, counts  # type: ignore[return-value]  # no None left


@dataclass(frozen=True, slots=True)
class PlainBatch:
    """A CheckStream batch whose every request is plain, read from its wire bytes
    (`plain_keys`) without a protobuf message."""

    raw: bytes  # the batch as it came: parsed only if a refusal must be worded per item
    keys: list[bytes]
    per_kind: list[int]  # plain requests per kind value (index 0 unused)

    def parsed(self) -> va_pb2.CheckBatchRequest:
        return va_pb2.CheckBatchRequest.FromString(self.raw)


class _BatchReader:
    """CheckStream's request deserializer (`batch_request`), bound to an object that
    names the message it reads, as a generated `Message.FromString` is: refusals of
    undecodable bytes name it (rpc/request_decoding.py)."""

    DESCRIPTOR = va_pb2.CheckBatchRequest.DESCRIPTOR

    def read(self, raw: bytes) -> PlainBatch | va_pb2.CheckBatchRequest:
        """The usual batch as its record keys, read from the bytes in compiled code;
        any other parsed by protobuf (which raises on bytes that are no
        CheckBatchRequest, as the generated deserializer does). The usual batch is
        never parsed, nor serialized again to find its keys."""
        plain = plain_keys(raw)
        if plain is None:
            return va_pb2.CheckBatchRequest.FromString(raw)
        return PlainBatch(raw, *plain)


batch_request = _BatchReader().read


class _CheckReader:
    """Unary Check's request deserializer (`check_request`), named as `_BatchReader` is."""

    DESCRIPTOR = va_pb2.CheckRequest.DESCRIPTOR

    def read(self, raw: bytes) -> bytes | va_pb2.CheckRequest:
        """The usual request as its record key, read from the bytes in compiled code
        (plain as `plain_keys` reads each item); any other parsed by protobuf, which
        raises on bytes that are no CheckRequest. Without the compiled module every
        request is parsed, and `pb.plain_kind_serial`, the reference, reads it."""
        key = None if _batch_wire is None else _batch_wire.plain_key(raw)
        return va_pb2.CheckRequest.FromString(raw) if key is None else key

    def or_else(self, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        """`read` that gives every request it does not read itself to `parse` (a
        deserializer that never raises: rpc/request_decoding.py's), so that `parse`
        need not wrap the usual request's read: that read is then one compiled call,
        where `parse(read)` was two Python frames around it."""
        if _batch_wire is None:
            return parse
        return partial(_batch_wire.plain_key_or, parse)


check_request = _CheckReader().read
