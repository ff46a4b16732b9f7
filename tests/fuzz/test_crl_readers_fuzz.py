"""pki/crl_stream.py's readers: any bytes are read or declined, and what is read is true.

The index build reads every CRL of a snapshot with `tbs_certlist` and `read_entries`,
and falls back to cryptography when the strict reader declines (None). So the
readers may raise only ValueError, and `read_entries` may answer only when its answer
is cryptography's: a mutated CRL it still reads must say what cryptography says.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st

from jpki_va.core.domain import CertKind, CrlReason, LossCause
from jpki_va.core.oids import OID_LOSS_CAUSE
from jpki_va.server.pki import cert_profile, crl_stream, der
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.crl_profile import CrlEntry

CORPUS = Path(__file__).resolve().parent / "corpus"
SEEDS = [p.read_bytes() for p in sorted((CORPUS / "crl").glob("*.der"))]
NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = cert_profile.root_certificate(KEY, NOW - timedelta(days=1), NOW + timedelta(days=3650))
Entry = tuple[bytes, int, int, int]


def _tbs(data: bytes) -> bytes | None:
    try:
        return crl_stream.tbs_certlist(data)
    except ValueError:
        return None


class Unreadable(Exception):
    """cryptography cannot read the CRL at all; the snapshot verifier refuses it first."""


def _entries_by_cryptography(crl_der: bytes) -> list[Entry] | None:
    """What the index build's fallback reads from the same CRL (None: an entry it
    would refuse, for want of the loss cause)."""
    try:
        # Entries and their extensions are parsed lazily: read them all here.
        revoked = [(e, e.extensions) for e in x509.load_der_x509_crl(crl_der)]
    except ValueError as exc:
        raise Unreadable(str(exc)) from None
    out = []
    for entry, extensions in revoked:
        try:
            cause = extensions.get_extension_for_oid(OID_LOSS_CAUSE).value
        except x509.ExtensionNotFound:
            return None
        assert isinstance(cause, x509.UnrecognizedExtension)
        try:
            code = _REASON_CODES[extensions.get_extension_for_class(x509.CRLReason).value.reason]
        except x509.ExtensionNotFound:
            code = 0
        out.append(
            (
                entry.serial_number.to_bytes(20, "big"),
                calendar.timegm(entry.revocation_date_utc.utctimetuple()),
                cause.value[2],
                code,
            )
        )
    return out


_REASON_CODES = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}


@given(st.binary(max_size=200))
@example(b"")
@example(b"\x30")
@example(b"\x30\x81")
@example(b"\x30\x02\x30")
def test_tbs_certlist_reads_or_raises_value_error(data: bytes) -> None:
    tbs = _tbs(data)
    if tbs is not None:
        assert tbs in data


@given(st.binary(max_size=200))
@example(b"")
@example(b"\x30\x03\x02\x01\x01")
def test_read_entries_reads_or_declines(data: bytes) -> None:
    entries = crl_stream.read_entries(data)
    assert entries is None or isinstance(entries, list)


_times = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda when: when.replace(microsecond=0))
_entry = st.builds(
    CrlEntry,
    serial=st.integers(1, (1 << 159) - 1),
    time=_times,
    cause=st.sampled_from(LossCause),
    reason=st.sampled_from([r for r in CrlReason if r is not CrlReason.REMOVE_FROM_CRL]),
)


@given(st.lists(_entry, max_size=6))
def test_what_crl_der_writes_reads_back(entries: list[CrlEntry]) -> None:
    crl_der = crl_stream.crl_der(
        ProfileSettings(),
        KEY,
        ROOT,
        kind=CertKind.CARD_AUTH,
        partition="131016",
        number=3,
        this_update=NOW,
        next_update=NOW + timedelta(days=1),
        entries=entries,
    )
    read = crl_stream.read_entries(crl_stream.tbs_certlist(crl_der))
    expected = [
        (e.serial.to_bytes(20, "big"), calendar.timegm(e.time.utctimetuple()), e.cause, e.reason)
        for e in entries
    ]
    assert read == expected
    assert _entries_by_cryptography(crl_der) == expected


def _rewrap(original: bytes, tbs: bytes) -> bytes:
    """The CertificateList `original` with its tbsCertList replaced (signature kept)."""
    _, start, _ = der.read(original, 0, len(original))
    _, _, tbs_end = der.read(original, start, len(original))
    return der.sequence(tbs, original[tbs_end:])


def _entries_region(tbs: bytes) -> tuple[int, int]:
    """Where the revokedCertificates element lies in a tbsCertList (all of it if none)."""
    _, pos, end = der.read(tbs, 0, len(tbs))
    elements = []
    while pos < end:
        tag, _, stop = der.read(tbs, pos, end)
        elements.append((tag, pos, stop))
        pos = stop
    if len(elements) == 7:
        return elements[5][1], elements[5][2]
    return 0, len(tbs)


@given(st.data())
def test_a_mutated_crl_is_read_as_cryptography_reads_it_or_declined(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(SEEDS))
    tbs = crl_stream.tbs_certlist(seed)
    low, high = _entries_region(tbs)
    buf = bytearray(tbs)
    for _ in range(data.draw(st.integers(1, 3))):
        # Mostly inside the entries, where the strict reader does its own reading.
        pos = data.draw(st.integers(low, high - 1) | st.integers(0, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[pos] = data.draw(st.integers(0, 255))
        else:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    mutated = bytes(buf)
    read = crl_stream.read_entries(mutated)
    if read is None:
        return
    try:
        expected = _entries_by_cryptography(_rewrap(seed, mutated))
    except Unreadable:
        # Never reaches the reader: snapshot/verify.py loads and checks every CRL first.
        return
    assert read == expected
