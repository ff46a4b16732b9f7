"""responder/_ocsp_miss.pyx, the compiled twin of an OCSP cache miss's byte work, says
exactly what its pure-Python references say, case by case.

- `usual_request` against `ocsp_wire.usual_request`: the same OcspRequest and CertId
  (values and types) or None, for the usual form and every way of missing it;
- `served` against `preproduced.py_served`: the same tuple (body, times, signature,
  basis, label code), None, or exception type, for every check an entry must pass and
  every status the rule gives; outside its envelope it hands the reference the same
  seven arguments.

The compiled module is called directly (with a recording fallback where it matters),
so a silent fall back to the reference cannot hide a compiled bug, and it must be
present in the installed tree (a broken build fails here). The bodies it frames are
also parsed by pyca/cryptography, so both twins are checked against a third reader.
tests/fuzz/test_ocsp_miss_fuzz.py draws the cases this file names.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from jpki_va.core.domain import CrlReason, LossCause, Status, micros
from jpki_va.server.pki import der, ocsp_wire
from jpki_va.server.pki.ocsp_wire import (
    MAX_SERIAL,
    CertId,
    CertStatus,
    OcspRequest,
    ResponseWriter,
    sha1_cert_id,
)
from jpki_va.server.responder import _ocsp_miss, ocsp_miss
from jpki_va.server.responder.preproduced import (
    SERVE_MARGIN_US,
    Basis,
    PreproducedEntry,
    Served,
    basis_of_value,
    py_served,
)
from jpki_va.server.responder.status import label_code
from jpki_va.server.snapshot.record_format import pack_value
from tests.fuzz.test_ocsp_wire_fuzz import _usual as usual_form

KEY_HASH = bytes(range(20))
ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
WRITER = ResponseWriter(KEY_HASH, ECDSA_SHA256)
NAME_HASH, ISSUER_KEY_HASH = b"\x11" * 20, b"\x22" * 20
SERIAL = 0x0123_4567_89AB_CDEF
CERT_ID = sha1_cert_id(NAME_HASH, ISSUER_KEY_HASH, SERIAL)
SIGNATURE = b"\x30\x45" + bytes(range(69))  # the size of an ECDSA P-256 signature
THIS = datetime(2026, 1, 1, tzinfo=UTC)
NEXT = THIS + timedelta(days=1)
THIS_US, NEXT_US = micros(THIS), micros(NEXT)
WHEN = THIS_US + 3_600_000_000  # an hour into the entry's validity
SECOND = 1_000_000
# The certificate's validity, in the index's seconds: well around WHEN.
NOT_BEFORE = THIS_US // SECOND - 86_400 * 365
NOT_AFTER = THIS_US // SECOND + 86_400 * 365 * 5
LOST = THIS - timedelta(days=3)  # a loss recorded before the entry was signed
LOST_S = micros(LOST) // SECOND


def _certificate() -> bytes:
    """A self-signed certificate, DER: what the certs field carries (the delegated one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jpki-va test OCSP signer")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(THIS - timedelta(days=30))
        .not_valid_after(THIS + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(Encoding.DER)


CERTIFICATE = _certificate()
CERTS = ocsp_wire.certs_field([CERTIFICATE])


def _raw(
    basis: Basis,
    *,
    singles: list[bytes] | None = None,
    this_update: int = THIS_US,
    next_update: int = NEXT_US,
    writer: ResponseWriter = WRITER,
    signature: bytes = SIGNATURE,
) -> bytes:
    """An encoded entry the producer would write: a real tbs naming CERT_ID (a GOOD
    SingleResponse unless `singles` is given) and stating `basis`."""
    if singles is None:
        singles = [writer.single(CERT_ID, CertStatus.GOOD, THIS, NEXT)]
    tbs = writer.tbs(THIS, singles, None)
    return PreproducedEntry(
        this_update, next_update, basis, tbs.index(CERT_ID), tbs, signature
    ).encode()


def _revoked_single(reason: CrlReason) -> bytes:
    return WRITER.single(CERT_ID, CertStatus.REVOKED, THIS, NEXT, LOST, int(reason))


class _Recorder:
    """A fallback that records what it is handed and answers `answer`."""

    def __init__(self, answer: Any = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.answer = answer

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.answer


def _outcome(function: Callable[..., Served | None], *args: Any) -> tuple[str, Any]:
    """What a call gave: ("value", result) or ("raised", the exception's type)."""
    try:
        return "value", function(*args)
    except Exception as exc:  # the reference's own errors: the twin must match the type
        return "raised", type(exc)


def _served(
    raw: bytes,
    value: bytes | None,
    when: int = WHEN,
    cert_id: bytes = CERT_ID,
    writer: ResponseWriter = WRITER,
    certs_size: int = len(CERTS),
    margin: int = SERVE_MARGIN_US,
) -> Served | None:
    """Both twins on one case, inside the compiled envelope: the same answer, and the
    compiled one reached it without its fallback."""
    args = (raw, value, when, cert_id, writer, certs_size, margin)
    fallback = _Recorder()
    compiled = _ocsp_miss.served(fallback, *args)
    reference = py_served(*args)
    assert compiled == reference
    assert fallback.calls == []  # inside the envelope: the compiled code's own answer
    if reference is not None:
        assert compiled is not None
        assert [type(part) for part in compiled] == [type(part) for part in reference]
        assert [type(part) for part in compiled[4]] == [int] * 4
    assert ocsp_miss.served(*args) == reference  # and what the responder calls
    return reference


def _good_value() -> bytes:
    return pack_value(NOT_BEFORE, NOT_AFTER, 131_016, 1)


GOOD: Basis = (int(Status.GOOD), -1, 0, 0)


# The compiled module is what serves ------------------------------------------------


def test_the_installed_tree_uses_the_compiled_twin() -> None:
    """`./tasks setup` (and the image's install) builds the extension; were the build
    broken, the import above or this test fails instead of the references serving."""
    assert ocsp_miss.COMPILED
    assert Path(_ocsp_miss.__file__).suffix == ".so"
    assert vars(ocsp_miss)["_ocsp_miss"] is _ocsp_miss
    assert isinstance(ocsp_miss.usual_request, partial)
    assert ocsp_miss.usual_request.func is _ocsp_miss.usual_request
    assert ocsp_miss.usual_request.args == (CertId, OcspRequest)
    assert isinstance(ocsp_miss.served, partial)
    assert ocsp_miss.served.func is _ocsp_miss.served
    assert ocsp_miss.served.args == (py_served,)  # its fallback is the reference


# served: a real entry, framed the same and read by cryptography ----------------------


def test_a_real_entry_is_served_the_same_and_parses_as_an_ocsp_response() -> None:
    raw = _raw(GOOD)
    value = _good_value()
    served = _served(raw, value)
    assert served is not None
    body, this_update, next_update, signature, basis, code = served
    assert (this_update, next_update, signature, basis) == (THIS_US, NEXT_US, SIGNATURE, GOOD)
    assert code == label_code(int(Status.GOOD), 0)
    entry = PreproducedEntry.decode(raw)
    assert entry is not None
    assert body + CERTS == WRITER.response(entry.tbs, SIGNATURE, CERTS)

    response = ocsp.load_der_ocsp_response(body + CERTS)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.serial_number == SERIAL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.responder_key_hash == KEY_HASH
    assert (response.issuer_name_hash, response.issuer_key_hash) == (NAME_HASH, ISSUER_KEY_HASH)
    assert (response.this_update_utc, response.next_update_utc) == (THIS, NEXT)
    assert response.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert response.signature == SIGNATURE
    assert response.tbs_response_bytes == entry.tbs
    assert [c.public_bytes(Encoding.DER) for c in response.certificates] == [CERTIFICATE]


def test_a_revoked_entry_is_served_the_same_and_states_its_time_and_reason() -> None:
    cause, reason = LossCause.HOLDER_REQUEST, CrlReason.KEY_COMPROMISE
    value = pack_value(NOT_BEFORE, NOT_AFTER, 131_016, 1, LOST_S, int(cause), int(reason))
    basis = (int(Status.REVOKED), LOST_S * SECOND, int(cause), int(reason))
    served = _served(_raw(basis, singles=[_revoked_single(reason)]), value)
    assert served is not None
    assert served[4] == basis and served[5] == int(Status.REVOKED) * 256 + int(cause)
    response = ocsp.load_der_ocsp_response(served[0] + CERTS)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == LOST
    assert response.revocation_reason is x509.ReasonFlags.key_compromise


# served: each check that turns an entry away -----------------------------------------


_REVOKED_VALUE = pack_value(NOT_BEFORE, NOT_AFTER, 131_016, 1, LOST_S, 1, 1)
_REVOKED: Basis = (int(Status.REVOKED), LOST_S * SECOND, 1, 1)


@pytest.mark.parametrize(
    ("value", "right", "wrong"),
    [
        (_good_value(), GOOD, (int(Status.REVOKED), -1, 0, 0)),
        (_good_value(), GOOD, (int(Status.GOOD), 0, 0, 0)),
        (_good_value(), GOOD, (int(Status.GOOD), -1, 1, 0)),
        (_good_value(), GOOD, (int(Status.GOOD), -1, 0, 1)),
        (_REVOKED_VALUE, _REVOKED, (int(Status.UNKNOWN), *_REVOKED[1:])),
        (_REVOKED_VALUE, _REVOKED, (_REVOKED[0], _REVOKED[1] + 1, *_REVOKED[2:])),
        (_REVOKED_VALUE, _REVOKED, (*_REVOKED[:2], 2, _REVOKED[3])),
        (_REVOKED_VALUE, _REVOKED, (*_REVOKED[:3], 0)),  # the reason alone differs
    ],
    ids=["status", "lost", "cause", "reason", "r-status", "r-lost", "r-cause", "r-reason"],
)
def test_an_entry_stating_another_basis_is_not_served(
    value: bytes, right: Basis, wrong: Basis
) -> None:
    assert basis_of_value(value, WHEN) == right
    assert _served(_raw(right), value) is not None  # the control: only the basis differs
    assert _served(_raw(wrong), value) is None


def test_an_entry_is_served_only_from_this_update_to_its_next_update_less_the_margin() -> None:
    raw, value = _raw(GOOD), _good_value()
    assert _served(raw, value, when=THIS_US - 1) is None  # before thisUpdate
    assert _served(raw, value, when=THIS_US) is not None
    last = NEXT_US - SERVE_MARGIN_US - 1  # the last microsecond outside the margin
    assert _served(raw, value, when=last) is not None
    assert _served(raw, value, when=last + 1) is None
    assert _served(raw, value, when=NEXT_US) is None
    # A margin of zero: up to the microsecond before nextUpdate; one more, none.
    assert _served(raw, value, when=NEXT_US - 1, margin=0) is not None
    assert _served(raw, value, when=NEXT_US - 1, margin=1) is None


def test_an_entry_of_another_signer_or_certificate_is_not_served() -> None:
    raw, value = _raw(GOOD), _good_value()
    other_signer = ResponseWriter(bytes(20), ECDSA_SHA256)
    assert _served(raw, value, writer=other_signer) is None
    other_serial = sha1_cert_id(NAME_HASH, ISSUER_KEY_HASH, SERIAL + 1)
    assert _served(raw, value, cert_id=other_serial) is None
    other_issuer = sha1_cert_id(NAME_HASH, b"\x23" * 20, SERIAL)
    assert _served(raw, value, cert_id=other_issuer) is None
    # A CertID that runs past the tbs's end is not named either.
    assert _served(raw, value, cert_id=CERT_ID + b"\x00" * 300) is None


def test_an_entry_of_another_format_or_torn_short_is_not_served() -> None:
    raw, value = _raw(GOOD), _good_value()
    assert _served(b"\x02" + raw[1:], value) is None
    assert _served(b"\x00" + raw[1:], value) is None
    assert _served(raw[:31], value) is None
    assert _served(b"", value) is None
    assert _served(b"\x01", None) is None


def test_a_torn_entry_longer_than_its_head_is_judged_as_the_reference_judges_it() -> None:
    raw, value = _raw(GOOD), _good_value()
    for size in (40, 100, len(raw) - 71, len(raw) - 1):
        _served(raw[:size], value)  # the tbs cut short: both read what is there
    for size in (32, 33):  # a tbs of under two octets: the reference's IndexError
        args = (raw[:size], value, WHEN, CERT_ID, WRITER, len(CERTS), SERVE_MARGIN_US)
        compiled = _outcome(_ocsp_miss.served, py_served, *args)
        assert compiled == _outcome(py_served, *args) == ("raised", IndexError)
    # The head's tbs length past the end: all of it the tbs, no signature.
    longer = raw[:30] + struct.pack(">H", 0xFFFF) + raw[32:]
    served = _served(longer, value)
    assert served is not None and served[3] == b""


# served: every status of the rule ---------------------------------------------------


_STATUS_CASES = {
    "good": (_good_value(), GOOD),
    "revoked": (_REVOKED_VALUE, _REVOKED),
    "loss later than now": (
        pack_value(NOT_BEFORE, NOT_AFTER, 131_016, 1, WHEN // SECOND + 1, 2, 4),
        (int(Status.GOOD), (WHEN // SECOND + 1) * SECOND, 2, 4),
    ),
    "loss at this very second": (
        pack_value(NOT_BEFORE, NOT_AFTER, 131_016, 1, WHEN // SECOND, 5, 0),
        (int(Status.REVOKED), WHEN // SECOND * SECOND, 5, 0),
    ),
    "not yet valid": (
        pack_value(WHEN // SECOND + 1, NOT_AFTER, 131_016, 1),
        (int(Status.NOT_YET_VALID), -1, 0, 0),
    ),
    "expired": (
        pack_value(NOT_BEFORE, WHEN // SECOND - 1, 131_016, 1),
        (int(Status.EXPIRED), -1, 0, 0),
    ),
    "expired with a later loss": (
        pack_value(NOT_BEFORE, WHEN // SECOND - 1, 131_016, 1, WHEN // SECOND + 9, 3, 9),
        (int(Status.EXPIRED), (WHEN // SECOND + 9) * SECOND, 3, 9),
    ),
    # No loss recorded: its time and reason octets do not count.
    "no loss, stray octets": (
        pack_value(NOT_BEFORE, NOT_AFTER, 131_016, 1, 12_345, 0, 7),
        GOOD,
    ),
    "not held": (None, (int(Status.UNKNOWN), -1, 0, 0)),
}


@pytest.mark.parametrize(("value", "basis"), _STATUS_CASES.values(), ids=_STATUS_CASES.keys())
def test_each_status_of_the_rule_is_served_as_the_reference_serves_it(
    value: bytes | None, basis: Basis
) -> None:
    assert basis_of_value(value, WHEN) == basis
    served = _served(_raw(basis), value)
    assert served is not None
    assert served[4] == basis
    assert served[5] == label_code(basis[0], basis[2])
    # One field off is not served (the twins agree on that too).
    assert _served(_raw((basis[0] ^ 7, *basis[1:])), value) is None


def test_the_validity_boundaries_are_exact_to_the_microsecond() -> None:
    """The index keeps seconds: `when` on a second and one microsecond either side."""
    second = WHEN // SECOND
    for when in (second * SECOND - 1, second * SECOND, second * SECOND + 1):
        for value in (
            pack_value(second, NOT_AFTER, 1, 1),  # notBefore
            pack_value(NOT_BEFORE, second, 1, 1),  # notAfter
            pack_value(NOT_BEFORE, NOT_AFTER, 1, 1, second, 1, 3),  # the loss
        ):
            basis = basis_of_value(value, when)
            assert _served(_raw(basis), value, when=when) is not None


# served: lengths of two and three octets ------------------------------------------


def _outer(body: bytes) -> tuple[int, int]:
    """The outermost tag and the size its DER length states (read by hand: `body`
    stops where the certs field would start)."""
    if body[1] < 0x80:
        return body[0], 2 + body[1]
    octets = body[1] & 0x7F
    return body[0], 2 + octets + int.from_bytes(body[2 : 2 + octets], "big")


@pytest.mark.parametrize("singles", [1, 3, 300], ids=["short-tbs", "tbs-2-octets", "tbs-30k"])
@pytest.mark.parametrize("signature", [0, 71, 127, 128, 255, 256, 70_000])
def test_long_lengths_are_framed_the_same(singles: int, signature: int) -> None:
    single = WRITER.single(CERT_ID, CertStatus.GOOD, THIS, NEXT)
    raw = _raw(GOOD, singles=[single] * singles, signature=bytes(signature))
    value = _good_value()
    # Every certs size that moves an outer length across 1, 2, 3 and 4 octets.
    for certs_size in (*range(300), *range(65_200, 65_600), 70_000, 16_777_000, 16_777_300):
        served = _served(raw, value, certs_size=certs_size)
        assert served is not None
        # The outermost length counts the certs field that is not in the body.
        assert _outer(served[0]) == (der.SEQUENCE, len(served[0]) + certs_size)


def test_a_response_with_three_octet_lengths_parses() -> None:
    single = WRITER.single(CERT_ID, CertStatus.GOOD, THIS, NEXT)
    raw = _raw(GOOD, singles=[single] * 250)  # a tbs of about 25 kB
    certs = ocsp_wire.certs_field([CERTIFICATE] * 250)  # and certs of more than 64 kB
    assert len(certs) > 0x10000
    served = _served(raw, _good_value(), certs_size=len(certs))
    assert served is not None
    response = ocsp.load_der_ocsp_response(served[0] + certs)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert len(list(response.responses)) == 250
    assert len(response.certificates) == 250


# served: outside the envelope the reference answers --------------------------------


_FAR = (1 << 63) - 1  # the latest nextUpdate an entry can hold
_FALLBACK_CASES: dict[str, tuple[bytes, bytes | None, int, int, int]] = {
    # (raw, value, when, certs_size, margin)
    "when 2**63": (_raw(GOOD), _good_value(), 1 << 63, len(CERTS), SERVE_MARGIN_US),
    "when 2**62, served": (
        _raw((int(Status.UNKNOWN), -1, 0, 0), next_update=_FAR),
        None,
        1 << 62,
        len(CERTS),
        0,
    ),
    "when -2**62": (_raw(GOOD), None, -(1 << 62), len(CERTS), SERVE_MARGIN_US),
    "value of 31 bytes": (_raw(GOOD), _good_value()[:31], WHEN, len(CERTS), SERVE_MARGIN_US),
    "value of 33 bytes": (_raw(GOOD), _good_value() + b"\0", WHEN, len(CERTS), SERVE_MARGIN_US),
    "not_after 10**13 s": (
        _raw(GOOD),
        pack_value(NOT_BEFORE, 10**13, 1, 1),
        WHEN,
        len(CERTS),
        SERVE_MARGIN_US,
    ),
    "revoked_at -10**13 s without a loss": (
        _raw(GOOD),
        pack_value(NOT_BEFORE, NOT_AFTER, 1, 1, -(10**13), 0, 0),
        WHEN,
        len(CERTS),
        SERVE_MARGIN_US,
    ),
    "certs_size -1": (_raw(GOOD), _good_value(), WHEN, -1, SERVE_MARGIN_US),
    # Lengths that would overflow 64-bit sums: the reference frames them.
    "certs_size 2**62": (_raw(GOOD), _good_value(), WHEN, 1 << 62, SERVE_MARGIN_US),
    "certs_size 2**63 - 100": (_raw(GOOD), _good_value(), WHEN, (1 << 63) - 100, SERVE_MARGIN_US),
    "margin -1": (_raw(GOOD), _good_value(), WHEN, len(CERTS), -1),
    "margin 2**62": (_raw(GOOD), _good_value(), WHEN, len(CERTS), 1 << 62),
    "margin 2**64": (_raw(GOOD), _good_value(), WHEN, len(CERTS), 1 << 64),
    # The signer check reached with a tbs of one octet: the reference raises IndexError.
    "tbs of one octet": (
        PreproducedEntry(THIS_US, NEXT_US, GOOD, 0, b"\x30", b"").encode(),
        _good_value(),
        WHEN,
        len(CERTS),
        SERVE_MARGIN_US,
    ),
}


@pytest.mark.parametrize(
    ("raw", "value", "when", "certs_size", "margin"),
    _FALLBACK_CASES.values(),
    ids=_FALLBACK_CASES.keys(),
)
def test_outside_its_envelope_the_compiled_twin_hands_the_reference_the_same_arguments(
    raw: bytes, value: bytes | None, when: int, certs_size: int, margin: int
) -> None:
    args = (raw, value, when, CERT_ID, WRITER, certs_size, margin)
    sentinel = object()
    fallback = _Recorder(sentinel)
    assert _ocsp_miss.served(fallback, *args) is sentinel
    assert fallback.calls == [args]
    assert fallback.calls[0][4] is WRITER
    # With the reference as its fallback: the reference's answer, or its exception.
    compiled = _outcome(_ocsp_miss.served, py_served, *args)
    assert compiled == _outcome(py_served, *args)
    assert _outcome(ocsp_miss.served, *args) == compiled


def test_the_fallback_cases_include_answers_and_errors() -> None:
    """The cases above are not all None: the reference serves some and raises on some."""
    outcomes = [
        _outcome(py_served, raw, value, when, CERT_ID, WRITER, certs_size, margin)
        for raw, value, when, certs_size, margin in _FALLBACK_CASES.values()
    ]
    assert any(kind == "value" and result is not None for kind, result in outcomes)
    assert ("raised", struct.error) in outcomes and ("raised", IndexError) in outcomes


def test_an_entry_of_another_format_is_judged_after_the_value_as_the_reference_does() -> None:
    """The reference reads the value before the entry: an entry of another format is
    None for a right value, and a value it cannot read raises as the reference's does,
    whatever the entry."""
    other = b"\x02" + _raw(GOOD)[1:]
    for raw in (b"", other):
        for value in (None, _good_value()):
            assert _ocsp_miss.served(py_served, raw, value, WHEN, CERT_ID, WRITER, 0, 0) is None
        for unreadable in (bytes(31), "a str"):
            args = (raw, unreadable, WHEN, CERT_ID, WRITER, 0, 0)
            compiled = _outcome(_ocsp_miss.served, py_served, *args)
            assert compiled[0] == "raised"
            assert compiled == _outcome(py_served, *args)


def test_none_for_bytes_is_a_type_error_in_both() -> None:
    """Never read as bytes: None where an entry, a CertID or a request is due."""
    raw, value = _raw(GOOD), _good_value()
    for args in (
        (None, value, WHEN, CERT_ID, WRITER, len(CERTS), SERVE_MARGIN_US),
        (raw, value, WHEN, None, WRITER, len(CERTS), SERVE_MARGIN_US),
    ):
        assert _outcome(_ocsp_miss.served, py_served, *args) == ("raised", TypeError)
        assert _outcome(py_served, *args) == ("raised", TypeError)
    with pytest.raises(TypeError):
        _ocsp_miss.usual_request(CertId, OcspRequest, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ocsp_wire.usual_request(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm_counted", [True, False])
@pytest.mark.parametrize("near", [-1, 0])
def test_a_long_algorithm_identifier_is_framed_the_same_near_the_length_table(
    algorithm_counted: bool, near: int
) -> None:
    """`ResponseWriter.body` takes lengths from a table below a size that counts the
    algorithm identifier too: one of 42 octets (longer than ECDSA's or RSA's) frames as
    the compiled twin does on either side of that size, and of the size without it
    (where the table once ran out: IndexError)."""
    writer = ResponseWriter(KEY_HASH, der.sequence(b"\x06\x26" + bytes(38)))
    raw = _raw(GOOD, writer=writer)
    entry = PreproducedEntry.decode(raw)
    assert entry is not None
    size = ocsp_wire._FRAMED - len(entry.tbs) - len(entry.signature) + near
    if algorithm_counted:
        size -= len(writer.algorithm)
    args = (raw, _good_value(), WHEN, CERT_ID, writer, size, SERVE_MARGIN_US)
    reference = py_served(*args)
    assert reference is not None
    fallback = _Recorder()
    assert _ocsp_miss.served(fallback, *args) == reference
    assert fallback.calls == []  # framed in C, not handed back


# usual_request ----------------------------------------------------------------------


def _usual(serial: bytes, null: bool = True, name_hash: bytes = NAME_HASH) -> bytes:
    """The usual request's form around `serial`, an INTEGER's content octets as given."""
    return usual_form(name_hash, ISSUER_KEY_HASH, serial, null)


def _read(data: bytes) -> OcspRequest | None:
    """Both readers on `data`: the same request, of the same types, or None."""
    compiled = _ocsp_miss.usual_request(CertId, OcspRequest, data)
    reference = ocsp_wire.usual_request(data)
    assert compiled == reference
    assert ocsp_miss.usual_request(data) == reference
    if reference is None:
        assert compiled is None
        return None
    assert compiled is not None
    assert type(compiled) is OcspRequest and type(compiled.cert_ids) is tuple
    (cert_id,) = compiled.cert_ids
    assert type(cert_id) is CertId
    assert [type(f) for f in cert_id] == [bytes, str, bytes, bytes, int]
    assert (type(compiled.request_list), compiled.nonce) == (bytes, None)
    # What the full parser reads too (the reference's own promise).
    assert reference == ocsp_wire._parse_request(data, 5)
    return reference


_SERIALS = {
    "one": (b"\x01", 1),
    "20 octets, largest without a leading zero": (b"\x7f" + b"\xff" * 19, (1 << 159) - 1),
    "21 octets with a leading zero, the largest": (b"\x00" + b"\xff" * 20, MAX_SERIAL),
    "high bit after a leading zero": (b"\x00\x80", 0x80),
    "zero": (b"\x00", None),
    "negative": (b"\x80", None),
    "negative, long": (b"\xff" * 20, None),
    "not minimal": (b"\x00\x7f", None),
    "not minimal, two zeros": (b"\x00\x00\x80", None),
    "one past the largest": (b"\x01" + b"\x00" * 20, None),
    "22 octets with a leading zero": (b"\x00\x80" + b"\x00" * 20, None),
    "empty": (b"", None),
}


@pytest.mark.parametrize("null", [True, False], ids=["null-params", "no-params"])
@pytest.mark.parametrize(("octets", "serial"), _SERIALS.values(), ids=_SERIALS.keys())
def test_the_usual_request_reads_its_serial_as_the_reference_does(
    octets: bytes, serial: int | None, null: bool
) -> None:
    data = _usual(octets, null)
    request = _read(data)
    if serial is None:
        assert request is None
    else:
        assert request is not None
        (cert_id,) = request.cert_ids
        assert cert_id == CertId(data[8:], "sha1", NAME_HASH, ISSUER_KEY_HASH, serial)
        assert request.request_list == data[4:]


def test_every_other_form_is_refused_by_both() -> None:
    usual = _usual(b"\x01\x02\x03")
    assert _read(usual) is not None  # the control
    for other in (
        usual + b"\x00",  # a trailing octet
        usual[:-1],  # one short
        _usual(b"\x01\x02\x03", name_hash=NAME_HASH[:19]),  # a hash of 19 octets
        _usual(b"\x01\x02\x03", name_hash=NAME_HASH + b"\x00"),  # and of 21
        _usual(b"\x01" * 80),  # a request of 0x82 octets and more
        _usual(b"\x01\x02\x03", null=False)[:-1],
        usual[:55],
        b"",
    ):
        assert _read(other) is None
    # Each octet changed, one at a time: only a changed hash octet, or a serial octet
    # after the first, still reads; any header, the algorithm or the serial's sign not.
    hashes_at = {*range(23, 43), *range(45, 65)}
    for at in range(len(usual)):
        for bit in (0x01, 0x80):
            changed = usual[:at] + bytes([usual[at] ^ bit]) + usual[at + 1 :]
            read = _read(changed)
            assert (read is not None) == (at in hashes_at or at > 67), (at, bit)


def test_requests_cryptography_builds_are_read_the_same() -> None:
    for serial in (1, 0x80, SERIAL, MAX_SERIAL):
        built = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            NAME_HASH, ISSUER_KEY_HASH, serial, hashes.SHA1()
        )
        request = _read(built.build().public_bytes(Encoding.DER))
        assert request is not None and request.cert_ids[0].serial == serial
    sha256 = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        b"\x11" * 32, b"\x22" * 32, SERIAL, hashes.SHA256()
    )
    assert _read(sha256.build().public_bytes(Encoding.DER)) is None
    with_nonce = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(NAME_HASH, ISSUER_KEY_HASH, SERIAL, hashes.SHA1())
        .add_extension(x509.OCSPNonce(b"\x05" * 16), critical=False)
    )
    assert _read(with_nonce.build().public_bytes(Encoding.DER)) is None
