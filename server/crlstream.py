"""Partition CRLs with millions of entries: the profile of `profiles.crl`, entries as DER.

cryptography's CRL builder makes several Python objects per entry and copies its
entry list on every addition, which dominates at national scale (millions of
losses). Here the CRL's frame (version, issuer, times, extensions) still comes
from `profiles.crl` with no entries, so the profile lives in one place; only the
revokedCertificates list is written directly as DER, in the same encoding the
builder produces (the tests compare the bytes), and the result is signed with
the issuer key (an HSM key in production).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import Certificate

from server import profiles
from server.domain import OID_LOSS_CAUSE, CertKind, CrlReason, LossCause
from server.profiles import CrlEntry, ProfileSettings

_REASON_OID_DER = bytes.fromhex("0603551d15")  # id-ce-cRLReasons 2.5.29.21
_EXTENSIONS_TAG = 0xA0  # crlExtensions [0] EXPLICIT


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        rest = arc >> 7
        chunk = [arc & 0x7F]
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


_LOSS_CAUSE_OID = _oid_der(OID_LOSS_CAUSE.dotted_string)


def _integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("serial numbers are positive")
    if value.bit_length() >= 160:  # RFC 5280 §4.1.2.2: at most 20 octets
        raise ValueError("serial numbers have at most 159 bits")
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _time(when: datetime) -> bytes:
    """RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after; whole seconds."""
    when = when.astimezone(UTC)
    if 1950 <= when.year < 2050:
        return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode())


def _enumerated_extension(oid: bytes, value: int) -> bytes:
    # Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE (absent), extnValue }
    return _tlv(0x30, oid + _tlv(0x04, bytes([0x0A, 0x01, value])))


def entry_der(entry: CrlEntry) -> bytes:
    """One revokedCertificates element, as `profiles.crl` encodes it."""
    extensions = _enumerated_extension(_LOSS_CAUSE_OID, entry.cause)
    # RFC 5280 §5.3.1: the reasonCode unspecified SHOULD be absent.
    if entry.reason is not CrlReason.UNSPECIFIED:
        extensions += _enumerated_extension(_REASON_OID_DER, entry.reason)
    return _tlv(0x30, _integer(entry.serial) + _time(entry.time) + _tlv(0x30, extensions))


def _elements(der: bytes) -> list[bytes]:
    """The TLV elements inside one DER SEQUENCE (definite lengths only)."""
    if not der or der[0] != 0x30:
        raise ValueError("expected a DER SEQUENCE")
    body, _ = _split(der, 0)
    out = []
    pos = 0
    while pos < len(body):
        _, end = _split(body, pos)
        out.append(body[pos:end])
        pos = end
    return out


def _split(der: bytes, pos: int) -> tuple[bytes, int]:
    """(content, end offset) of the TLV starting at `pos`."""
    first = der[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        count = first & 0x7F
        start = pos + 2 + count
        length = int.from_bytes(der[pos + 2 : start], "big")
    end = start + length
    if end > len(der):
        raise ValueError("truncated DER")
    return der[start:end], end


class _Capture:
    """Stands in for the issuer key while cryptography builds the frame: keeps the TBS."""

    tbs: bytes | None = None

    def _capture(self, data: bytes | bytearray | memoryview) -> bytes:
        self.tbs = bytes(data)
        return b"\x00"  # never published: the frame's signature is thrown away

    @staticmethod
    def _refuse() -> NoReturn:
        raise TypeError("a CRL frame key only captures what would be signed")


class _RsaCapture(_Capture, rsa.RSAPrivateKey):
    def __init__(self, public: rsa.RSAPublicKey) -> None:
        self._public = public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        padding: padding.AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        return self._capture(data)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        self._refuse()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        self._refuse()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._refuse()

    def __copy__(self) -> _RsaCapture:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _RsaCapture:
        return self


class _EcCapture(_Capture, ec.EllipticCurvePrivateKey):
    def __init__(self, public: ec.EllipticCurvePublicKey) -> None:
        self._public = public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        return self._capture(data)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        self._refuse()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._refuse()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._refuse()

    def __copy__(self) -> _EcCapture:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _EcCapture:
        return self


def _sign(key: CertificateIssuerPrivateKeyTypes, tbs: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    raise TypeError(f"unsupported issuer key type {type(key).__name__}")


def crl_der(
    settings: ProfileSettings,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    issuer_cert: Certificate,
    *,
    kind: CertKind,
    partition: str,
    number: int,
    this_update: datetime,
    next_update: datetime,
    entries: Iterable[CrlEntry],
    delta_base: int | None = None,
) -> bytes:
    """The DER of the CRL `profiles.crl` would sign for these arguments.

    Entries are encoded as they come (callers pass them in serial order, as the
    publisher does); the frame costs one throw-away build and no signature.
    """
    public = issuer_key.public_key()
    capture: _RsaCapture | _EcCapture
    if isinstance(public, rsa.RSAPublicKey):
        capture = _RsaCapture(public)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        capture = _EcCapture(public)
    else:
        raise TypeError(f"unsupported issuer key type {type(public).__name__}")
    frame = profiles.crl(
        settings,
        capture,
        issuer_cert,
        kind=kind,
        partition=partition,
        number=number,
        this_update=this_update,
        next_update=next_update,
        entries=(),
        delta_base=delta_base,
    )
    assert capture.tbs is not None
    fields = _elements(capture.tbs)
    if fields[-1][0] != _EXTENSIONS_TAG:
        raise ValueError("CRL frame without crlExtensions")
    revoked = b"".join(entry_der(e) for e in entries)
    if revoked:
        fields.insert(len(fields) - 1, _tlv(0x30, revoked))
    tbs = _tlv(0x30, b"".join(fields))
    signature_algorithm = _elements(frame.public_bytes(serialization.Encoding.DER))[1]
    signature = _sign(issuer_key, tbs)
    return _tlv(0x30, tbs + signature_algorithm + _tlv(0x03, b"\x00" + signature))


# reading ----------------------------------------------------------------------------------
# cryptography makes several Python objects per revoked entry and parses its extensions
# one by one; at national scale the index build reads millions of entries. This reader
# understands exactly the entries `entry_der` writes and returns None for anything else
# (the caller then reads the CRL with cryptography), so it never guesses.
_TIME_TAGS = {0x17: 13, 0x18: 15}  # UTCTime YYMMDDHHMMSSZ, GeneralizedTime YYYYMMDDHHMMSSZ
_CAUSE_PREFIX = _LOSS_CAUSE_OID + b"\x04\x03\x0a\x01"
_REASON_EXT = bytes.fromhex("300a") + _REASON_OID_DER + b"\x04\x03\x0a\x01"
_CAUSE_EXT_SIZE = 2 + len(_CAUSE_PREFIX) + 1  # SEQUENCE header, OID, OCTET STRING, value
_REASON_EXT_SIZE = len(_REASON_EXT) + 1
_CAUSES = frozenset(int(c) for c in LossCause)
_REASONS = frozenset(int(r) for r in CrlReason if r is not CrlReason.UNSPECIFIED)


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at `pos`; ValueError when malformed."""
    tag = der[pos]
    first = der[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        start = pos + 2 + count
        length = int.from_bytes(der[pos + 2 : start], "big")
        if length < 0x80 or der[pos + 2] == 0:
            raise ValueError("non-minimal DER length")
    end = start + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, start, end


def _revoked_list(tbs: bytes) -> tuple[int, int] | None:
    """(start, end) of the revokedCertificates content of a tbsCertList of our profile."""
    tag, pos, end = _element(tbs, 0)
    if tag != 0x30 or end != len(tbs):
        return None
    if tbs[pos : pos + 3] != b"\x02\x01\x01":  # version v2, the only one with entry extensions
        return None
    tags = []
    bounds = []
    while pos < end:
        tag, start, pos = _element(tbs, pos)
        tags.append(tag)
        bounds.append((start, pos))
    # version, signature, issuer, thisUpdate, nextUpdate, [revokedCertificates], crlExtensions
    if len(tags) == 6 and tags[0] == 0x02 and tags[1:3] == [0x30, 0x30] and tags[5] == 0xA0:
        return (0, 0) if tags[3] in _TIME_TAGS and tags[4] in _TIME_TAGS else None
    if (
        len(tags) == 7
        and tags[0] == 0x02
        and tags[1:3] == [0x30, 0x30]
        and tags[3] in _TIME_TAGS
        and tags[4] in _TIME_TAGS
        and tags[5] == 0x30
        and tags[6] == 0xA0
    ):
        return bounds[5]
    return None


_day_seconds: dict[bytes, int] = {}


def _seconds(text: bytes) -> int:
    """Seconds since the epoch of a UTCTime/GeneralizedTime body (digits then Z)."""
    if len(text) == 13:
        yy = int(text[:2])
        date, clock = (b"19" if yy >= 50 else b"20") + text[:6], text[6:12]
    else:
        date, clock = text[:8], text[8:14]
    if text[-1:] != b"Z" or not (date.isdigit() and clock.isdigit()):
        raise ValueError("malformed CRL entry time")
    day = _day_seconds.get(date)
    if day is None:
        day = int(calendar.timegm(datetime.strptime(date.decode(), "%Y%m%d").timetuple()))
        _day_seconds[date] = day
    hour, minute, second = int(clock[:2]), int(clock[2:4]), int(clock[4:6])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError("malformed CRL entry time")
    return day + hour * 3600 + minute * 60 + second


def _entry(tbs: bytes, pos: int, end: int) -> tuple[tuple[bytes, int, int, int], int]:
    """One revokedCertificates element as `entry_der` writes it, and where it ends;
    ValueError for anything else."""
    tag, start, entry_end = _element(tbs, pos)
    if tag != 0x30 or entry_end > end:
        raise ValueError("not an entry")
    # serial: a positive minimal INTEGER of at most 20 octets
    tag, s_start, s_end = _element(tbs, start)
    size = s_end - s_start
    if tag != 0x02 or not 1 <= size <= 20 or tbs[s_start] & 0x80:
        raise ValueError("not a serial of ours")
    if size > 1 and tbs[s_start] == 0 and not tbs[s_start + 1] & 0x80:
        raise ValueError("non-minimal serial")
    tag, t_start, t_end = _element(tbs, s_end)
    if _TIME_TAGS.get(tag) != t_end - t_start:
        raise ValueError("not a time of ours")
    when = _seconds(tbs[t_start:t_end])
    tag, x_start, x_end = _element(tbs, t_end)
    if tag != 0x30 or x_end != entry_end:
        raise ValueError("not entry extensions")
    # the loss cause, then the reason code unless it is unspecified
    head = tbs[x_start : x_start + _CAUSE_EXT_SIZE]
    if head[0] != 0x30 or head[1] != _CAUSE_EXT_SIZE - 2 or head[2:-1] != _CAUSE_PREFIX:
        raise ValueError("no loss cause first")
    cause, reason = head[-1], 0
    rest = tbs[x_start + _CAUSE_EXT_SIZE : x_end]
    if rest:
        if len(rest) != _REASON_EXT_SIZE or rest[:-1] != _REASON_EXT:
            raise ValueError("an extension other than the reason code")
        reason = rest[-1]
    if cause not in _CAUSES or (rest and reason not in _REASONS):
        raise ValueError("unknown cause or reason")
    return (tbs[s_start:s_end].rjust(20, b"\0"), when, cause, reason), entry_end


def read_entries(tbs: bytes) -> list[tuple[bytes, int, int, int]] | None:
    """(serial as 20 big-endian bytes, revocation time in seconds, cause, reason) of each
    entry of a tbsCertList, or None unless every byte is as `crl_der` writes it."""
    try:
        bounds = _revoked_list(tbs)
        if bounds is None:
            return None
        out = []
        pos, end = bounds
        while pos < end:
            entry, pos = _entry(tbs, pos, end)
            out.append(entry)
        return out
    except (ValueError, IndexError):
        return None
