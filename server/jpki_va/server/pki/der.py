"""Just enough DER to read OCSP requests and write OCSP responses.

cryptography parses only single-CertID OCSP requests and builds only one
SingleResponse, so the OCSP layer reads and writes the few structures it needs
itself. The reader is strict (definite lengths in minimal form, one-byte tags,
nothing left over): anything else is not DER and the request is malformed.
"""

from __future__ import annotations

from datetime import UTC, datetime

# Universal tags used by OCSP.
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30


def context(number: int, constructed: bool = True) -> int:
    """The tag of [number] (EXPLICIT tags are constructed)."""
    return (0xA0 if constructed else 0x80) | number


class DerError(ValueError):
    """The bytes are not the DER structure expected."""


def read(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The TLV at `pos`: (tag, start of value, end of value); bounded by `end`."""
    if pos + 2 > end:
        raise DerError("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not used here")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerError("indefinite length is not DER")
        if count > 4 or pos + count > end:
            raise DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("length not in minimal form")
        pos += count
    if pos + length > end:
        raise DerError("truncated")
    return tag, pos, pos + length


def expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """The value bounds of the TLV at `pos`, which must carry `tag`."""
    got, start, stop = read(data, pos, end)
    if got != tag:
        raise DerError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def read_unsigned(data: bytes, start: int, stop: int, what: str) -> int:
    """A non-negative INTEGER value in minimal two's complement form."""
    if start == stop:
        raise DerError(f"{what}: empty INTEGER")
    if data[start] & 0x80:
        raise DerError(f"{what}: negative")
    if stop - start > 1 and data[start] == 0 and not data[start + 1] & 0x80:
        raise DerError(f"{what}: INTEGER not in minimal form")
    return int.from_bytes(data[start:stop], "big")


def length(n: int) -> bytes:
    if n < 0x80:
        return _SHORT[n]
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


_SHORT = [bytes((n,)) for n in range(0x80)]  # the one-octet lengths, made once


def tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:  # most TLVs of a response: one join, no length bytes built
        return bytes((tag, n)) + value
    return bytes((tag,)) + length(n) + value


def sequence(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def unsigned(value: int) -> bytes:
    """A non-negative INTEGER (a leading zero octet keeps it positive)."""
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def enumerated(value: int) -> bytes:
    return tlv(ENUMERATED, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def generalized_time(when: datetime) -> bytes:
    """RFC 5280 GeneralizedTime: UTC, whole seconds, 'Z'."""
    return tlv(GENERALIZED_TIME, when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())


def bit_string(value: bytes) -> bytes:
    return tlv(BIT_STRING, b"\x00" + value)
