"""pki/ocsp_wire.py and pki/der.py: any bytes are read or refused as malformed, never crash.

The OCSP request parser faces the network (HTTP GET and POST, gRPC Ocsp), so any
exception other than `MalformedRequest` would be an error the responder did not
word. What it accepts must also be what was sent: the CertIDs are the request's own
bytes, and a request cryptography builds reads back field for field.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from hypothesis import example, given
from hypothesis import strategies as st

from jpki_va.server.pki import der
from jpki_va.server.pki.der import DerError
from jpki_va.server.pki.ocsp_wire import (
    MAX_SERIAL,
    NONCE_MAX,
    MalformedRequest,
    OcspRequest,
    _parse_request,
    parse_request,
    usual_request,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
SEEDS = [p.read_bytes() for p in sorted((CORPUS / "ocsp").glob("*.der"))]
MAX_CERT_IDS = 5
_SIZES = {"sha1": 20, "sha256": 32}


def _parse(data: bytes) -> OcspRequest | None:
    try:
        return parse_request(data, MAX_CERT_IDS)
    except MalformedRequest:
        return None


def _consistent(request: OcspRequest, data: bytes) -> None:
    """What the parser accepted is the request's own bytes, within the limits."""
    assert 1 <= len(request.cert_ids) <= MAX_CERT_IDS
    assert request.request_list in data
    for cert_id in request.cert_ids:
        assert cert_id.der in request.request_list
        size = _SIZES[cert_id.algorithm]
        assert len(cert_id.name_hash) == len(cert_id.key_hash) == size
        assert 0 < cert_id.serial <= MAX_SERIAL
    if request.nonce is not None:
        assert 1 <= len(request.nonce) <= NONCE_MAX


@given(st.binary(max_size=300))
@example(b"")
@example(b"\x30\x80")  # indefinite length
@example(b"\x30\x84\xff\xff\xff\xff")  # a length past the end
@example(b"\x30\x00")
@example(b"\x1f\x01\x00")  # a multi-byte tag
def test_any_bytes_parse_or_are_malformed(data: bytes) -> None:
    request = _parse(data)
    if request is not None:
        _consistent(request, data)


def _mutate(data: bytes, source: st.DataObject) -> bytes:
    draw = source.draw
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate")))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.sampled_from((0x00, 0x7F, 0x80, 0x81, 0x82, 0xFF, 0x30, 0xA0)))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and buf:
            del buf[pos : pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


@given(st.data())
def test_mutated_seeds_parse_or_are_malformed(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(SEEDS))
    mutated = _mutate(seed, data)
    request = _parse(mutated)
    if request is not None:
        _consistent(request, mutated)


def _reference(data: bytes) -> OcspRequest | None:
    try:
        return _parse_request(data, MAX_CERT_IDS)
    except (MalformedRequest, DerError):
        return None


def _usual(name_hash: bytes, key_hash: bytes, serial: bytes, null: bool) -> bytes:
    """The usual request's form around `serial`, an INTEGER's content octets as given."""
    algorithm = der.sequence(bytes.fromhex("06052b0e03021a"), *([der.tlv(der.NULL, b"")] * null))
    cert_id = der.sequence(
        algorithm,
        der.tlv(der.OCTET_STRING, name_hash),
        der.tlv(der.OCTET_STRING, key_hash),
        der.tlv(der.INTEGER, serial),
    )
    return der.sequence(der.sequence(der.sequence(der.sequence(cert_id))))


_serials = st.integers(1, MAX_SERIAL).map(lambda n: der.unsigned(n)[2:]) | st.binary(
    min_size=0,
    max_size=23,  # any octets: empty, negative, not minimal, too long
)


@given(
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    _serials,
    st.booleans(),
    st.data(),
)
@example(b"\x01" * 20, b"\x02" * 20, b"\x00", True, None)  # serial zero
@example(b"\x01" * 20, b"\x02" * 20, b"\x80", True, None)  # negative
@example(b"\x01" * 20, b"\x02" * 20, b"\x00\x7f", True, None)  # not minimal
@example(b"\x01" * 20, b"\x02" * 20, b"\x00" + b"\xff" * 20, False, None)  # the largest
@example(b"\x01" * 20, b"\x02" * 20, b"\x01" + b"\x00" * 20, True, None)  # one past it
def test_the_usual_request_reads_as_the_reference_reads_it(
    name_hash: bytes, key_hash: bytes, serial: bytes, null: bool, data: st.DataObject | None
) -> None:
    usual_form = _usual(name_hash, key_hash, serial, null)
    request = usual_form
    if data is not None and data.draw(st.booleans()):
        request = _mutate(request, data)
    usual = usual_request(request)
    reference = _reference(request)
    # Never a different reading: the same request, or none and the reference decides.
    assert usual is None or usual == reference
    if request == usual_form and reference is not None:
        assert usual is not None  # the usual form, when valid, is read by position


def test_a_sha1_request_cryptography_builds_is_the_usual_one() -> None:
    built = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        b"\x01" * 20, b"\x02" * 20, 1234567, hashes.SHA1()
    )
    data = built.build().public_bytes(Encoding.DER)
    usual = usual_request(data)
    assert usual is not None and usual == _reference(data)


def test_every_seed_parses() -> None:
    assert SEEDS
    for seed in SEEDS:
        request = _parse(seed)
        assert request is not None, seed.hex()
        _consistent(request, seed)


_cert_ids = st.tuples(
    st.sampled_from(("sha1", "sha256")),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.integers(1, MAX_SERIAL),
)


@given(_cert_ids, st.none() | st.binary(min_size=1, max_size=32))
def test_a_request_cryptography_builds_reads_back(
    cert_id: tuple[str, bytes, bytes, int], nonce: bytes | None
) -> None:
    algorithm, name_hash, key_hash, serial = cert_id
    size = _SIZES[algorithm]
    hash_algorithm = hashes.SHA1() if algorithm == "sha1" else hashes.SHA256()
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash[:size], key_hash[:size], serial, hash_algorithm
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    data = builder.build().public_bytes(Encoding.DER)
    request = parse_request(data, MAX_CERT_IDS)
    (parsed,) = request.cert_ids
    assert (parsed.algorithm, parsed.name_hash, parsed.key_hash, parsed.serial) == (
        algorithm,
        name_hash[:size],
        key_hash[:size],
        serial,
    )
    assert request.nonce == nonce


# der.py ---------------------------------------------------------------------------------
@given(st.binary(max_size=40), st.integers(0, 45))
def test_der_read_stays_inside_its_bounds(data: bytes, pos: int) -> None:
    try:
        tag, start, stop = der.read(data, pos, len(data))
    except DerError:
        return
    assert pos + 2 <= start <= stop <= len(data)
    assert tag == data[pos]


@given(
    st.sampled_from((der.SEQUENCE, der.OCTET_STRING, der.INTEGER, der.context(0), 0x80)),
    st.binary(max_size=70_000),
)
def test_der_tlv_reads_back(tag: int, value: bytes) -> None:
    encoded = der.tlv(tag, value)
    assert der.read(encoded, 0, len(encoded)) == (tag, len(encoded) - len(value), len(encoded))


@given(st.integers(0, 2**200))
def test_der_unsigned_reads_back(value: int) -> None:
    encoded = der.unsigned(value)
    start, stop = der.expect(encoded, 0, len(encoded), der.INTEGER, "n")
    assert der.read_unsigned(encoded, start, stop, "n") == value


@given(st.binary(max_size=24))
def test_der_read_unsigned_takes_only_minimal_non_negative(value: bytes) -> None:
    try:
        number = der.read_unsigned(value, 0, len(value), "n")
    except DerError:
        return
    assert der.unsigned(number)[2:] == value  # the one minimal encoding of it
