"""RFC 6960 OCSP messages on the wire: requests with several CertIDs, their responses.

Reading: an OCSPRequest becomes the CertIDs it asks about, the requestList bytes
(what the answer depends on, so the key of the signed-response cache) and the
nonce (RFC 9654). Writing: SingleResponses, ResponseData, BasicOCSPResponse and
the OCSPResponse around it; signing is the caller's.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from jpki_va.server.pki import der
from jpki_va.server.pki.der import DerError

# Full TLVs of the object identifiers we read or write.
_SHA1 = bytes.fromhex("06052b0e03021a")
_SHA256 = bytes.fromhex("0609608648016503040201")
_NONCE = bytes.fromhex("06092b0601050507300102")  # id-pkix-ocsp-nonce
_BASIC = bytes.fromhex("06092b0601050507300101")  # id-pkix-ocsp-basic
_ALGORITHMS = {_SHA1: ("sha1", 20), _SHA256: ("sha256", 32)}
MAX_SERIAL = (1 << 160) - 1  # RFC 5280: at most 20 octets
NONCE_MAX = 128  # RFC 9654: 1 to 32 octets; responders accept up to 128 from old clients


class ResponseStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 §4.2.1)."""

    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


class CertStatus(enum.IntEnum):
    """CertStatus choice; the value is the context tag number."""

    GOOD = 0
    REVOKED = 1
    UNKNOWN = 2


class MalformedRequest(ValueError):
    """Not an OCSP request we can answer: the response is malformedRequest."""


# Named tuples, not dataclasses: the compiled reader of the usual request
# (responder/_ocsp_miss.pyx) makes them without running a Python constructor.
class CertId(NamedTuple):
    der: bytes  # as requested: echoed verbatim in the SingleResponse
    algorithm: str  # "sha1" or "sha256"
    name_hash: bytes
    key_hash: bytes
    serial: int


class OcspRequest(NamedTuple):
    cert_ids: tuple[CertId, ...]
    request_list: bytes  # DER of requestList: the request minus nonce and signature
    nonce: bytes | None


def _extensions(data: bytes, start: int, stop: int, where: str) -> dict[bytes, bytes]:
    """Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension; OID TLV -> extnValue value."""
    s, e = der.expect(data, start, stop, der.SEQUENCE, where)
    if e != stop:
        raise DerError(f"{where}: trailing bytes")
    if s == e:
        raise DerError(f"{where}: empty")
    found: dict[bytes, bytes] = {}
    pos = s
    while pos < e:
        es, ee = der.expect(data, pos, e, der.SEQUENCE, "extension")
        pos = ee
        tag, _, oe = der.read(data, es, ee)
        if tag != der.OID:
            raise DerError("extension without an identifier")
        oid = data[es:oe]
        critical = False
        tag, vs, ve = der.read(data, oe, ee)
        if tag == der.BOOLEAN:
            if ve - vs != 1 or data[vs] not in (0x00, 0xFF):
                raise DerError("bad BOOLEAN")
            critical = data[vs] == 0xFF
            tag, vs, ve = der.read(data, ve, ee)
        if tag != der.OCTET_STRING or ve != ee:
            raise DerError("bad extension value")
        if oid in found:
            raise DerError("duplicate extension")
        if critical and oid != _NONCE:
            raise MalformedRequest("unsupported critical extension")
        found[oid] = data[vs:ve]
    return found


def _cert_id(data: bytes, start: int, stop: int) -> CertId:
    s, e = der.expect(data, start, stop, der.SEQUENCE, "CertID")
    a_s, a_e = der.expect(data, s, e, der.SEQUENCE, "hashAlgorithm")
    tag, _, o_e = der.read(data, a_s, a_e)
    if tag != der.OID:
        raise DerError("hashAlgorithm without an identifier")
    known = _ALGORITHMS.get(data[a_s:o_e])
    if known is None:
        raise MalformedRequest("unsupported CertID hash algorithm")
    if o_e != a_e:  # parameters: absent or NULL
        tag, ps, pe = der.read(data, o_e, a_e)
        if tag != der.NULL or ps != pe or pe != a_e:
            raise DerError("hashAlgorithm parameters must be absent or NULL")
    algorithm, size = known
    ns, ne = der.expect(data, a_e, e, der.OCTET_STRING, "issuerNameHash")
    ks, ke = der.expect(data, ne, e, der.OCTET_STRING, "issuerKeyHash")
    ss, se = der.expect(data, ke, e, der.INTEGER, "serialNumber")
    if se != e:
        raise DerError("CertID: trailing bytes")
    if ne - ns != size or ke - ks != size:
        raise MalformedRequest(f"CertID hashes must be {size} octets for {algorithm}")
    serial = der.read_unsigned(data, ss, se, "serialNumber")
    if not 0 < serial <= MAX_SERIAL:
        raise MalformedRequest("serial number must be positive and at most 20 octets")
    return CertId(data[start:e], algorithm, data[ns:ne], data[ks:ke], serial)


def parse_request(data: bytes, max_cert_ids: int) -> OcspRequest:
    """Read an OCSPRequest; raises MalformedRequest when it is not one we can answer."""
    usual = usual_request(data)
    if usual is not None:
        return usual
    try:
        return _parse_request(data, max_cert_ids)
    except DerError as exc:
        raise MalformedRequest(f"not a DER OCSP request: {exc}") from None


# The AlgorithmIdentifier of SHA-1 as clients send it: with NULL parameters, or none.
_SHA1_WITH_NULL = bytes.fromhex("300906052b0e03021a0500")
_SHA1_BARE = bytes.fromhex("300706052b0e03021a")
_HASH_HEAD = b"\x04\x14"  # OCTET STRING of 20 octets


def usual_request(data: bytes) -> OcspRequest | None:
    """The usual request read by position: one SHA-1 CertID and nothing else (no
    version, requestor, extensions or signature), so every length is one octet.

    None for any other request, which `_parse_request` (the reference) reads; where
    this answers, it answers as that does (tests/fuzz compares them). A cache miss
    parses its request, and walking the DER costs it ~20 Python calls.
    """
    n = len(data)
    # OCSPRequest, tbsRequest, requestList, Request and CertID: each the rest.
    if not 56 <= n < 0x82 or data[:10] != bytes(
        (0x30, n - 2, 0x30, n - 4, 0x30, n - 6, 0x30, n - 8, 0x30, n - 10)
    ):
        return None
    if data.startswith(_SHA1_WITH_NULL, 10):
        names = 10 + len(_SHA1_WITH_NULL)
    elif data.startswith(_SHA1_BARE, 10):
        names = 10 + len(_SHA1_BARE)
    else:
        return None
    keys, number = names + 22, names + 44
    if (
        n < number + 3
        or data[names : names + 2] != _HASH_HEAD
        or data[keys : keys + 2] != _HASH_HEAD
        or data[number] != der.INTEGER
        or data[number + 1] != n - number - 2
    ):
        return None
    first = data[number + 2]
    serial = int.from_bytes(data[number + 2 :], "big")
    # Negative or not minimal (the reference words those), or out of range.
    if first & 0x80 or (first == 0 and n - number > 3 and not data[number + 3] & 0x80):
        return None
    if not 0 < serial <= MAX_SERIAL:
        return None
    cert_id = CertId(data[8:], "sha1", data[names + 2 : keys], data[keys + 2 : number], serial)
    return OcspRequest((cert_id,), data[4:], None)


def _parse_request(data: bytes, max_cert_ids: int) -> OcspRequest:
    if not data:
        raise MalformedRequest("empty request")
    s, e = der.expect(data, 0, len(data), der.SEQUENCE, "OCSPRequest")
    if e != len(data):
        raise DerError("trailing bytes after the request")
    ts, te = der.expect(data, s, e, der.SEQUENCE, "tbsRequest")
    if te != e:
        # optionalSignature [0]: accepted, not required, not checked.
        der.expect(data, te, e, der.context(0), "optionalSignature")
    pos = ts
    tag, vs, ve = der.read(data, pos, te)
    if tag == der.context(0):  # version, DEFAULT v1
        is_, ie = der.expect(data, vs, ve, der.INTEGER, "version")
        if ie != ve or der.read_unsigned(data, is_, ie, "version") != 0:
            raise MalformedRequest("unsupported request version")
        pos = ve
        tag, vs, ve = der.read(data, pos, te)
    if tag == der.context(1):  # requestorName: informational only
        pos = ve
        tag, vs, ve = der.read(data, pos, te)
    if tag != der.SEQUENCE:
        raise DerError("requestList missing")
    cert_ids = _request_list(data, vs, ve, max_cert_ids)
    nonce = None
    if ve != te:
        tag, xs, xe = der.read(data, ve, te)
        if tag != der.context(2) or xe != te:
            raise DerError("tbsRequest: trailing bytes")
        nonce = _nonce(_extensions(data, xs, xe, "requestExtensions").get(_NONCE))
    return OcspRequest(cert_ids, data[pos:ve], nonce)


def _request_list(data: bytes, start: int, stop: int, max_cert_ids: int) -> tuple[CertId, ...]:
    cert_ids: list[CertId] = []
    item = start
    while item < stop:
        rs, re_ = der.expect(data, item, stop, der.SEQUENCE, "Request")
        item = re_
        if len(cert_ids) == max_cert_ids:
            raise MalformedRequest(f"more than {max_cert_ids} CertIDs in one request")
        cert_id = _cert_id(data, rs, re_)
        cert_ids.append(cert_id)
        after = rs + len(cert_id.der)
        if after != re_:
            tag, xs, xe = der.read(data, after, re_)
            if tag != der.context(0) or xe != re_:
                raise DerError("Request: trailing bytes")
            _extensions(data, xs, xe, "singleRequestExtensions")
    if not cert_ids:
        raise MalformedRequest("no CertID in the request")
    return tuple(cert_ids)


def _nonce(value: bytes | None) -> bytes | None:
    """RFC 9654: extnValue holds Nonce ::= OCTET STRING."""
    if value is None:
        return None
    start, stop = der.expect(value, 0, len(value), der.OCTET_STRING, "nonce")
    if stop != len(value) or not 1 <= stop - start <= NONCE_MAX:
        raise MalformedRequest(f"nonce must be 1 to {NONCE_MAX} octets")
    return value[start:stop]


@dataclass(frozen=True, slots=True)
class SingleResponse:
    cert_id: CertId
    status: CertStatus
    this_update: datetime
    next_update: datetime
    revocation_time: datetime | None = None
    revocation_reason: int | None = None  # RFC 5280 CRLReason

    def encode(self) -> bytes:
        if self.status is CertStatus.REVOKED:
            assert self.revocation_time is not None
            info = _time(self.revocation_time)
            if self.revocation_reason is not None:
                info += der.tlv(der.context(0), der.enumerated(self.revocation_reason))
            status = der.tlv(der.context(1), info)
        else:
            status = _PLAIN_STATUS[self.status]
        return der.sequence(
            self.cert_id.der,
            status,
            _time(self.this_update),
            der.tlv(_NEXT_UPDATE, _time(self.next_update)),
        )


_NEXT_UPDATE = der.context(0)
_PLAIN_STATUS = {
    status: der.tlv(der.context(int(status), constructed=False), b"")
    for status in (CertStatus.GOOD, CertStatus.UNKNOWN)
}
_SUCCESSFUL = der.enumerated(ResponseStatus.SUCCESSFUL)
_TIMES: dict[datetime, bytes] = {}
_TIMES_KEPT = 4096


def _time(when: datetime) -> bytes:
    """GeneralizedTime of `when`, remembered: the answers of one index share a few
    thisUpdate and nextUpdate values, and formatting a date costs more than a lookup."""
    encoded = _TIMES.get(when)
    if encoded is None:
        if len(_TIMES) >= _TIMES_KEPT:
            _TIMES.clear()
        encoded = _TIMES[when] = der.generalized_time(when)
    return encoded


def responder_key_hash(spki_der: bytes) -> bytes:
    """ResponderID byKey: SHA-1 of the subjectPublicKey bits (RFC 6960 §4.2.1)."""
    s, e = der.expect(spki_der, 0, len(spki_der), der.SEQUENCE, "SubjectPublicKeyInfo")
    _, _, after = der.read(spki_der, s, e)
    bs, be = der.expect(spki_der, after, e, der.BIT_STRING, "subjectPublicKey")
    return hashlib.sha1(spki_der[bs + 1 : be]).digest()  # noqa: S324 (the RFC's choice)


def response_data(
    key_hash: bytes, produced_at: datetime, singles: list[bytes], nonce: bytes | None
) -> bytes:
    """tbsResponseData: the bytes the responder signs."""
    parts = [
        der.tlv(der.context(2), der.tlv(der.OCTET_STRING, key_hash)),
        der.generalized_time(produced_at),  # a new second each time: not remembered
        der.sequence(*singles),
    ]
    if nonce is not None:
        value = der.tlv(der.OCTET_STRING, der.tlv(der.OCTET_STRING, nonce))
        extension = der.sequence(_NONCE, value)
        parts.append(der.tlv(der.context(1), der.sequence(extension)))
    return der.sequence(*parts)


def certs_field(certs: list[bytes]) -> bytes:
    """The BasicOCSPResponse's `certs [0]` field; empty when there are none."""
    return der.tlv(der.context(0), der.sequence(*certs)) if certs else b""


def successful(tbs: bytes, algorithm: bytes, signature: bytes, certs: list[bytes]) -> bytes:
    """OCSPResponse(successful) around a BasicOCSPResponse."""
    return successful_with(tbs, algorithm, signature, certs_field(certs))


def successful_with(tbs: bytes, algorithm: bytes, signature: bytes, certs: bytes) -> bytes:
    """`successful` with the certs field already encoded (`certs_field`): a responder
    sends the same delegated certificate in every response."""
    basic = der.sequence(tbs, algorithm, der.bit_string(signature), certs)
    return der.sequence(
        der.enumerated(ResponseStatus.SUCCESSFUL),
        der.tlv(der.context(0), der.sequence(_BASIC, der.tlv(der.OCTET_STRING, basic))),
    )


def _head(tag: int, size: int) -> bytes:
    """A tag and the DER length of `size` octets of value."""
    if size < 0x80:
        return bytes((tag, size))
    if size < 0x100:
        return bytes((tag, 0x81, size))
    if size < 0x10000:
        return bytes((tag, 0x82, size >> 8, size & 0xFF))
    return bytes((tag,)) + der.length(size)


_VALIDITY: dict[tuple[datetime, datetime], bytes] = {}


def _validity(this_update: datetime, next_update: datetime) -> bytes:
    """thisUpdate and [0] nextUpdate, remembered: an index's answers share a few pairs."""
    encoded = _VALIDITY.get((this_update, next_update))
    if encoded is None:
        if len(_VALIDITY) >= _TIMES_KEPT:
            _VALIDITY.clear()
        encoded = _time(this_update) + der.tlv(_NEXT_UPDATE, _time(next_update))
        _VALIDITY[this_update, next_update] = encoded
    return encoded


class ResponseWriter:
    """The responses of one responder key, encoded with what they all repeat made once.

    Writes the bytes `SingleResponse.encode`, `response_data` and `successful_with`
    write (the reference a test compares it with), with fewer objects and calls: the
    responder writes one per signed answer.
    """

    __slots__ = ("_produced", "algorithm", "responder_id")

    def __init__(self, key_hash: bytes, algorithm: bytes) -> None:
        # Plain attributes (read by compiled code too): set here, never changed.
        #: The ResponderID (byKey) every response of this key carries first in its tbs.
        self.responder_id = der.tlv(der.context(2), der.tlv(der.OCTET_STRING, key_hash))
        #: The signatureAlgorithm, DER.
        self.algorithm = algorithm
        self._produced: tuple[int, bytes] = (-1, b"")  # (epoch second, its GeneralizedTime)

    @staticmethod
    def single(
        cert_id: bytes,
        status: CertStatus,
        this_update: datetime,
        next_update: datetime,
        revocation_time: datetime | None = None,
        revocation_reason: int | None = None,
    ) -> bytes:
        """A SingleResponse; `cert_id` is the CertID's DER as requested."""
        if status is CertStatus.REVOKED:
            assert revocation_time is not None
            info = _time(revocation_time)
            if revocation_reason is not None:
                info += der.tlv(der.context(0), der.enumerated(revocation_reason))
            state = _head(0xA1, len(info)) + info
        else:
            state = _PLAIN_STATUS[status]
        body = cert_id + state + _validity(this_update, next_update)
        return _head(der.SEQUENCE, len(body)) + body

    def tbs(self, produced_at: datetime, singles: list[bytes], nonce: bytes | None) -> bytes:
        """tbsResponseData: the bytes the responder signs."""
        second = int(produced_at.timestamp())
        seen, produced = self._produced
        if seen != second:
            produced = der.generalized_time(produced_at)
            self._produced = (second, produced)  # one assignment: safe between threads
        listed = singles[0] if len(singles) == 1 else b"".join(singles)
        body = self.responder_id + produced + _head(der.SEQUENCE, len(listed)) + listed
        if nonce is not None:
            value = der.tlv(der.OCTET_STRING, der.tlv(der.OCTET_STRING, nonce))
            body += der.tlv(der.context(1), der.sequence(der.sequence(_NONCE, value)))
        return _head(der.SEQUENCE, len(body)) + body

    def response(self, tbs: bytes, signature: bytes, certs: bytes) -> bytes:
        """The OCSPResponse (successful) around tbs, its signature and the certs field."""
        return self.body(tbs, signature, len(certs)) + certs

    def body(self, tbs: bytes, signature: bytes, certs_size: int) -> bytes:
        """The OCSPResponse (successful) up to its certs field, which comes last and
        whose `certs_size` octets its lengths count: what a worker keeps of a response
        (OcspReply.body; the delegated certificate is shared). Each length is taken
        from a table, not built by a call per header: one answer is framed per request."""
        algorithm = self.algorithm
        framed = len(tbs) + len(signature) + len(algorithm) + certs_size
        lengths = _LENGTHS if framed < _FRAMED else _ANY_LENGTHS
        size = len(signature) + 1  # the BIT STRING's unused-bits octet first
        bits = b"\x03" + lengths[size]
        size += len(tbs) + len(algorithm) + len(bits) + certs_size
        basic = b"\x30" + lengths[size]  # BasicOCSPResponse
        size += len(basic)
        octets = b"\x04" + lengths[size]  # responseBytes.response
        size += len(octets) + len(_BASIC)
        response_bytes = b"\x30" + lengths[size]
        size += len(response_bytes)
        explicit = b"\xa0" + lengths[size]  # [0] responseBytes
        size += len(explicit) + len(_SUCCESSFUL)
        return b"".join(
            (b"\x30", lengths[size], _SUCCESSFUL, explicit, response_bytes, _BASIC, octets,
             basic, tbs, algorithm, bits, b"\x00", signature)
        )  # fmt: skip


#: The DER length octets of every size below 4096, made once: a one-CertID response
#: and its delegated certificate fit well within it.
_LENGTHS = tuple(der.length(n) for n in range(4096))
#: Below this size of tbs, signature, algorithm identifier and certs, the whole response
#: fits `_LENGTHS`: the headers around them add fewer than 64 octets.
_FRAMED = len(_LENGTHS) - 64


class _AnyLengths:
    """`_LENGTHS` for a response too large for it: each length computed."""

    def __getitem__(self, size: int) -> bytes:
        return der.length(size)


_ANY_LENGTHS = _AnyLengths()


def sha1_cert_id(name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """The DER CertID of a certificate with SHA-1 hashes, its AlgorithmIdentifier with
    NULL parameters: what openssl and pyca/cryptography send, so what pre-produced
    responses are made for."""
    return der.sequence(
        _SHA1_ALGORITHM,
        der.tlv(der.OCTET_STRING, name_hash),
        der.tlv(der.OCTET_STRING, key_hash),
        der.unsigned(serial),
    )


_SHA1_ALGORITHM = der.sequence(_SHA1, der.tlv(der.NULL, b""))


def unsuccessful(status: ResponseStatus) -> bytes:
    return der.sequence(der.enumerated(int(status)))
