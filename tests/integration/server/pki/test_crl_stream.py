"""pki.crl_stream writes the same CRL bytes as crl_profile.crl, and openssl agrees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import CertKind, CrlReason, LossCause
from jpki_va.hsm import KeyType
from jpki_va.server.pki import cert_profile, crl_profile, crl_stream
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.crl_profile import CrlEntry
from tests.support import openssl

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def _entries(n: int) -> list[CrlEntry]:
    reasons = [CrlReason.UNSPECIFIED, CrlReason.KEY_COMPROMISE, CrlReason.AFFILIATION_CHANGED]
    return [
        CrlEntry(
            # short, long and high-bit serials: INTEGER encoding needs a 0x00 pad for some
            serial=[1, 0x80, 0xFF, 1 << 62 | i * 7919, (1 << 158) - i][i % 5] + i,
            time=NOW - timedelta(days=i, seconds=i),
            cause=LossCause(1 + i % 5),
            reason=reasons[i % 3],
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
@pytest.mark.parametrize("count", [0, 1, 300])
@pytest.mark.parametrize("delta", [None, 3])
def test_bytes_equal_the_builder(key_type: str, count: int, delta: int | None) -> None:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if key_type == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    root = cert_profile.root_certificate(key, NOW - timedelta(days=1), NOW + timedelta(days=3650))
    args = {
        "kind": CertKind.MOBILE_SIGN,
        "partition": "131016",
        "number": 42,
        "this_update": NOW,
        "next_update": NOW + timedelta(hours=48),
        "entries": _entries(count),
        "delta_base": delta,
    }
    expected = crl_profile.crl(ProfileSettings(), key, root, **args)  # type: ignore[arg-type]
    der = crl_stream.crl_der(ProfileSettings(), key, root, **args)  # type: ignore[arg-type]
    parsed = x509.load_der_x509_crl(der)
    assert parsed.is_signature_valid(key.public_key())
    assert parsed.tbs_certlist_bytes == expected.tbs_certlist_bytes
    if key_type == "rsa":  # PKCS#1 v1.5 is deterministic: the whole CRL is the same
        assert der == expected.public_bytes(Encoding.DER)
    assert [e.serial_number for e in parsed] == [e.serial for e in args["entries"]]  # type: ignore[attr-defined]


def test_generalized_time_after_2049() -> None:
    when = datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC)
    entry = CrlEntry(5, when, LossCause.RECORD_ERROR, CrlReason.UNSPECIFIED)
    assert b"\x18\x0f20510102030405Z" in crl_stream.entry_der(entry)
    assert b"\x17\x0d310506070809Z" in crl_stream.entry_der(
        CrlEntry(5, NOW, LossCause.RECORD_ERROR, CrlReason.UNSPECIFIED)
    )


def test_openssl_verifies_a_big_crl(hsm, tmp_path) -> None:
    """Signed by an HSM key, with thousands of entries: openssl crl -verify accepts it."""
    key = hsm.find_or_generate("crlstream-test-ca", KeyType.RSA_2048)
    root = cert_profile.root_certificate(key, NOW - timedelta(days=1), NOW + timedelta(days=3650))
    der = crl_stream.crl_der(
        ProfileSettings(),
        key,
        root,
        kind=CertKind.CARD_SIGN,
        partition="011002",
        number=1,
        this_update=datetime.now(UTC),
        next_update=datetime.now(UTC) + timedelta(hours=1),
        entries=_entries(5000),
    )
    (tmp_path / "ca.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (tmp_path / "big.crl").write_bytes(der)
    result = openssl(
        "crl",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "big.crl"),
        "-CAfile",
        str(tmp_path / "ca.pem"),
        "-noout",
        "-verify",
    )
    assert "verify OK" in result.stderr + result.stdout
    text = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "big.crl"), "-noout", "-text")
    assert text.stdout.count("Serial Number:") == 5000


def test_refuses_a_negative_serial() -> None:
    with pytest.raises(ValueError, match="positive"):
        crl_stream.entry_der(CrlEntry(-1, NOW, LossCause.HOLDER_REQUEST, CrlReason.UNSPECIFIED))


def test_refuses_a_serial_over_20_octets() -> None:
    with pytest.raises(ValueError, match="159 bits"):
        crl_stream.entry_der(
            CrlEntry(1 << 160, NOW, LossCause.HOLDER_REQUEST, CrlReason.UNSPECIFIED)
        )


def _expected(crl: x509.CertificateRevocationList) -> list[tuple[bytes, int, int, int]]:
    """What cryptography reads from each entry, in read_entries' terms."""
    return [
        (
            e.serial_number.to_bytes(20, "big"),
            int(e.revocation_date_utc.timestamp()),
            int(crl_profile.crl_entry_cause(e) or 0),
            int(crl_profile.crl_entry_reason(e)),
        )
        for e in crl
    ]


@pytest.mark.parametrize("count", [0, 1, 300])
@pytest.mark.parametrize("delta", [None, 3])
def test_reader_agrees_with_cryptography(count: int, delta: int | None) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    root = cert_profile.root_certificate(key, NOW - timedelta(days=1), NOW + timedelta(days=3650))
    entries = _entries(count)
    if count:  # a loss after 2049 is written as GeneralizedTime
        entries[-1] = CrlEntry(
            7, datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC), LossCause(1), CrlReason.SUPERSEDED
        )
        entries[0] = CrlEntry(0, NOW, LossCause(2), CrlReason.UNSPECIFIED)  # serial 0
    der = crl_stream.crl_der(
        ProfileSettings(), key, root, kind=CertKind.CARD_AUTH, partition="131016", number=4,
        this_update=NOW, next_update=NOW + timedelta(hours=48), entries=entries,
        delta_base=delta,
    )  # fmt: skip
    crl = x509.load_der_x509_crl(der)
    assert crl_stream.read_entries(crl.tbs_certlist_bytes) == _expected(crl)


def test_reader_refuses_what_it_does_not_fully_understand() -> None:
    """A foreign entry extension, an entry without our loss cause, altered bytes: None,
    so the caller reads the CRL with cryptography (which applies the profile's rules)."""
    key = ec.generate_private_key(ec.SECP256R1())
    root = cert_profile.root_certificate(key, NOW - timedelta(days=1), NOW + timedelta(days=3650))
    good = crl_profile.crl(
        ProfileSettings(), key, root, kind=CertKind.CARD_SIGN, partition="131016", number=1,
        this_update=NOW, next_update=NOW + timedelta(hours=1), entries=_entries(3),
    )  # fmt: skip
    tbs = good.tbs_certlist_bytes
    assert crl_stream.read_entries(tbs) == _expected(good)

    def foreign(*extensions: x509.ExtensionType) -> bytes:
        entry = x509.RevokedCertificateBuilder().serial_number(5).revocation_date(NOW)
        for ext in extensions:
            entry = entry.add_extension(ext, False)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(root.subject)
            .last_update(NOW)
            .next_update(NOW + timedelta(hours=1))
            .add_extension(x509.CRLNumber(1), False)
            .add_revoked_certificate(entry.build())
        )
        return builder.sign(key, hashes.SHA256()).tbs_certlist_bytes

    assert crl_stream.read_entries(foreign()) is None  # no loss cause
    assert crl_stream.read_entries(foreign(x509.CRLReason(x509.ReasonFlags.superseded))) is None
    assert crl_stream.read_entries(foreign(x509.InvalidityDate(NOW.replace(tzinfo=None)))) is None
    der = good.public_bytes(Encoding.DER)
    for position in range(len(tbs)):  # any altered byte: cryptography's reading or None
        altered = bytearray(tbs)
        altered[position] ^= 0x41
        try:  # the verifier parses every CRL with cryptography first
            parsed = x509.load_der_x509_crl(der.replace(tbs, bytes(altered)))
            expected = _expected(parsed)
        except (ValueError, x509.InvalidVersion):
            continue
        read = crl_stream.read_entries(bytes(altered))
        assert read is None or read == expected
