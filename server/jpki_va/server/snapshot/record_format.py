"""Binary issued-certificate records: the snapshot file format and the index value.

A snapshot's records file is a header line and then fixed-width records sorted by key,
so the index builder can stream it into LMDB with append=True. The index value is
the record plus the revocation read from the CRLs, packed for a one-`get` answer.
"""

from __future__ import annotations

import mmap
import operator
import struct
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import repeat
from typing import BinaryIO

from jpki_va.core.domain import CrlReason, Loss, LossCause, StatusRecord, parse_record_key

MAGIC = b"JPKIVA-RECORDS/1\n"
KEY_SIZE = 21
# key, not_before, not_after, partition (municipality code), issuer ordinal
_FILE_RECORD = struct.Struct(f"<{KEY_SIZE}sqqIH")
FILE_RECORD_SIZE = _FILE_RECORD.size
# not_before, not_after, partition, issuer ordinal, revoked_at, cause, reason
_VALUE = struct.Struct("<qqIHqBB")
VALUE_SIZE = _VALUE.size


def _ts(when: datetime) -> int:
    return int(when.timestamp())


def _dt(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def partition_number(partition: str) -> int:
    """Municipality codes are six digits; stored as an integer."""
    if len(partition) != 6 or not partition.isdigit():
        raise ValueError(f"municipality code must be six digits, got {partition!r}")
    return int(partition)


def partition_text(number: int) -> str:
    return f"{number:06d}"


def encode_file_record(
    key: bytes, not_before: datetime, not_after: datetime, partition: str, issuer_ordinal: int
) -> bytes:
    return pack_file_record(
        key, _ts(not_before), _ts(not_after), partition_number(partition), issuer_ordinal
    )


def pack_file_record(
    key: bytes, not_before: int, not_after: int, partition: int, issuer_ordinal: int
) -> bytes:
    """encode_file_record from raw values: times in seconds, the partition as a number."""
    return _FILE_RECORD.pack(key, not_before, not_after, partition, issuer_ordinal)


def write_records(out: BinaryIO, records: Iterable[bytes]) -> int:
    """Write encoded records (already sorted by key); returns how many."""
    out.write(MAGIC)
    count = 0
    previous = b""
    for record in records:
        key = record[:KEY_SIZE]
        if key <= previous:
            raise ValueError("records must be written in strictly increasing key order")
        previous = key
        out.write(record)
        count += 1
    return count


def records_body(data: memoryview | bytes | mmap.mmap) -> memoryview:
    """A view of the fixed-width records after a records file's header.

    Nothing is viewed before the checks pass: a view alive in an exception's traceback
    would keep a mapped file from closing.
    """
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise ValueError("not a jpki-va records file")
    if (len(data) - len(MAGIC)) % FILE_RECORD_SIZE:
        raise ValueError("records file is truncated")
    return memoryview(data)[len(MAGIC) :]


def read_records(data: memoryview | bytes) -> Iterator[tuple[bytes, int, int, int, int]]:
    """(key, not_before, not_after, partition, issuer ordinal) for each record."""
    yield from _FILE_RECORD.iter_unpack(records_body(data))


# The index value is the file record after its key, then the loss: a full build makes
# each value by one concatenation, and every per-record step below runs inside C
# iterators (struct.iter_unpack, map, zip): at 25 million records a Python-level loop
# would dominate the build.
_LOSS = struct.Struct("<qBB")
NO_LOSS = bytes(_LOSS.size)
_KEY_ONLY = struct.Struct(f"<{KEY_SIZE}s{FILE_RECORD_SIZE - KEY_SIZE}x")
_AFTER_KEY = struct.Struct(f"<{KEY_SIZE}x{FILE_RECORD_SIZE - KEY_SIZE}s")
_SCOPE = struct.Struct(f"<B{KEY_SIZE - 1}x16xIH")  # kind, partition, issuer ordinal
_first = operator.itemgetter(0)


def loss_suffix(revoked_at: int, cause: int, reason: int) -> bytes:
    """The loss part of an index value (what `pack_value` puts after the record)."""
    return _LOSS.pack(revoked_at, cause, reason)


def record_scopes(body: memoryview) -> set[tuple[int, int, int]]:
    """The distinct (kind byte, partition, issuer ordinal) of the records in `body`."""
    return set(_SCOPE.iter_unpack(body))


def index_items(body: memoryview, losses: dict[bytes, bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(key, index value) of each record, in file order; each record's loss suffix is
    popped from `losses` (key -> loss_suffix), so what is left names no record."""
    keys = map(_first, _KEY_ONLY.iter_unpack(body))
    suffixes = map(losses.pop, map(_first, _KEY_ONLY.iter_unpack(body)), repeat(NO_LOSS))
    values = map(operator.add, map(_first, _AFTER_KEY.iter_unpack(body)), suffixes)
    return zip(keys, values, strict=True)


def pack_value(
    not_before: int,
    not_after: int,
    partition: int,
    issuer_ordinal: int,
    revoked_at: int = 0,
    cause: int = 0,
    reason: int = 0,
) -> bytes:
    return _VALUE.pack(not_before, not_after, partition, issuer_ordinal, revoked_at, cause, reason)


def with_loss(value: bytes, revoked_at: int, cause: int, reason: int) -> bytes:
    nb, na, part, ordinal, _, _, _ = _VALUE.unpack(value)
    return _VALUE.pack(nb, na, part, ordinal, revoked_at, cause, reason)


def unpack_loss(value: bytes) -> tuple[int, int, int]:
    """(revoked_at, cause, reason) of an index value; cause 0 means no loss."""
    _, _, _, _, revoked_at, cause, reason = _VALUE.unpack(value)
    return revoked_at, cause, reason


def unpack_fields(value: bytes) -> tuple[int, int, int, int, int, int, int]:
    """(not_before, not_after, partition, issuer ordinal, revoked_at, cause, reason)."""
    fields: tuple[int, int, int, int, int, int, int] = _VALUE.unpack(value)
    return fields


def unpack_value(key: bytes, value: bytes, issuer_key_ids: list[bytes]) -> StatusRecord:
    kind, serial = parse_record_key(key)
    nb, na, part, ordinal, revoked_at, cause, reason = _VALUE.unpack(value)
    loss = (
        None
        if cause == 0
        else Loss(time=_dt(revoked_at), cause=LossCause(cause), reason=CrlReason(reason))
    )
    return StatusRecord(
        kind=kind,
        serial=serial,
        not_before=_dt(nb),
        not_after=_dt(na),
        partition=partition_text(part),
        issuer_key_id=issuer_key_ids[ordinal],
        loss=loss,
    )
