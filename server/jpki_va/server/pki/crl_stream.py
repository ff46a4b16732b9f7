"""Partition CRLs with millions of entries: the profile of `crl_profile.crl`, entries as DER.

cryptography's CRL builder makes several Python objects per entry and copies its
entry list on every addition, which dominates at national scale (millions of
losses). Here the CRL's frame (version, issuer, times, extensions) still comes
from `crl_profile.crl` with no entries, so the profile lives in one place; only the
revokedCertificates list is written directly as DER, in the same encoding the
builder produces (the tests compare the bytes), and the result is signed with
the issuer key (an HSM key in production).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import Certificate

from jpki_va.core.domain import CertKind, CrlReason, LossCause
from jpki_va.core.oids import OID_LOSS_CAUSE
from jpki_va.server.pki import crl_profile
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.crl_profile import CrlEntry

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
    """One revokedCertificates element, as `crl_profile.crl` encodes it."""
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
    """The DER of the CRL `crl_profile.crl` would sign for these arguments.

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
    frame = crl_profile.crl(
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
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
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


def tbs_certlist(der: bytes) -> bytes:
    """The tbsCertList (the signed part) of a DER CertificateList; ValueError if malformed."""
    tag, start, end = _element(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a DER CertificateList")
    tag, _, tbs_end = _element(der, start)
    if tag != 0x30:
        raise ValueError("not a DER CertificateList")
    return der[start:tbs_end]


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


def _byte_class(values: Iterable[int]) -> bytes:
    return b"[" + b"".join(re.escape(bytes([v])) for v in sorted(values)) + b"]"


_CAUSE_EXT = bytes([0x30, _CAUSE_EXT_SIZE - 2]) + _CAUSE_PREFIX
# An entry after its serial: the time, then the extensions as `entry_der` writes them.
_ENTRY_TAIL = re.compile(
    rb"(?:\x17\x0d(\d{6})(\d\d)(\d\d)(\d\d)|\x18\x0f(\d{8})(\d\d)(\d\d)(\d\d))Z"
    rb"\x30(?:"
    + re.escape(bytes([_CAUSE_EXT_SIZE]) + _CAUSE_EXT)
    + b"("
    + _byte_class(_CAUSES)
    + b")|"
    + re.escape(bytes([_CAUSE_EXT_SIZE + _REASON_EXT_SIZE]) + _CAUSE_EXT)
    + b"("
    + _byte_class(_CAUSES)
    + b")"
    + re.escape(_REASON_EXT)
    + b"("
    + _byte_class(_REASONS)
    + b"))",
    re.DOTALL,
)
_day_seconds: dict[bytes, int] = {}


def _day(date: bytes) -> int:
    """Seconds since the epoch at the start of a YYMMDD (UTCTime) or YYYYMMDD day."""
    seconds = _day_seconds.get(date)
    if seconds is None:
        text = date.decode()
        if len(text) == 6:  # RFC 5280 §4.1.2.5.1: YY below 50 is 20YY
            text = ("19" if int(text[:2]) >= 50 else "20") + text
        seconds = calendar.timegm(datetime.strptime(text, "%Y%m%d").timetuple())
        _day_seconds[date] = seconds
    return seconds


def read_entries(tbs: bytes) -> list[tuple[bytes, int, int, int]] | None:
    """(serial as 20 big-endian bytes, revocation time in seconds, cause, reason) of each
    entry of a tbsCertList, or None unless every byte is as `crl_der` writes it."""
    try:
        bounds = _revoked_list(tbs)
        if bounds is None:
            return None
        out: list[tuple[bytes, int, int, int]] = []
        append = out.append
        match = _ENTRY_TAIL.match
        pos, end = bounds
        while pos < end:
            # SEQUENCE (short length) { INTEGER serial: positive, minimal, <= 20 octets
            size, serial_size = tbs[pos + 1], tbs[pos + 3]
            serial_end = pos + 4 + serial_size
            if (
                tbs[pos] != 0x30
                or size >= 0x80
                or tbs[pos + 2] != 0x02
                or not 1 <= serial_size <= 20
                or tbs[pos + 4] & 0x80
                or (serial_size > 1 and tbs[pos + 4] == 0 and not tbs[pos + 5] & 0x80)
            ):
                return None
            m = match(tbs, serial_end)
            entry_end = pos + 2 + size
            if m is None or m.end() != entry_end or entry_end > end:
                return None
            utc_day, h1, m1, s1, gen_day, h2, m2, s2, cause1, cause2, reason = m.groups()
            day, hour, minute, second = (
                (utc_day, h1, m1, s1) if utc_day is not None else (gen_day, h2, m2, s2)
            )
            hour, minute, second = int(hour), int(minute), int(second)
            if hour > 23 or minute > 59 or second > 59:
                return None
            append(
                (
                    tbs[pos + 4 : serial_end].rjust(20, b"\0"),
                    _day(day) + hour * 3600 + minute * 60 + second,
                    (cause1 or cause2)[0],
                    0 if reason is None else reason[0],
                )
            )
            pos = entry_end
        return out
    except (ValueError, IndexError):
        return None
