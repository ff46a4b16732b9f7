"""The key ceremony's config, idempotence and lint, on the session's SoftHSM2 token.

Labels are unique per test (the token is shared by the whole session). The example
config itself runs through the CLI in tests/hsm/test_hsm_cli.py.
"""

from __future__ import annotations

import tomllib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from jpki_va.core.clock import FixedClock
from jpki_va.core.domain import CertKind
from jpki_va.hsm import Hsm, KeyType
from jpki_va.server.pki import cert_profile
from jpki_va.server.pki.cert_profile import CertProfile
from jpki_va.server.pki.lint import LintError, lint_certificate
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.authority import Authority, AuthoritySettings
from jpki_va.server.signer.ceremony import CeremonyConfig, CeremonyError, run_ceremony
from jpki_va.server.signer.rotation import next_label, rotate_issuer
from tests.support import REPO

EXAMPLE = REPO / "examples" / "ceremony.toml"
NOW = datetime(2031, 1, 1, tzinfo=UTC)


def _settings() -> AuthoritySettings:
    return AuthoritySettings(label_prefix=f"t{uuid.uuid4().hex[:10]}")


def test_example_config_is_the_embedded_default() -> None:
    assert CeremonyConfig.from_toml(EXAMPLE) == CeremonyConfig.default()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["issuers"].pop("card-auth"), "issuers missing from the ceremony: card-auth"),
        (lambda d: d["root"].update(key_type="dsa-1024"), "key_type must be one of"),
        (lambda d: d["root"].update(subject="not a name"), "subject is not an RFC 4514 name"),
        (lambda d: d["snapshot"].update(validity_days=0), "validity_days must be a positive"),
        (lambda d: d["snapshot"].update(validity_days=99999), "longer than the root's"),
        (lambda d: d["snapshot"].update(colour="blue"), "unknown settings colour"),
        (
            lambda d: d["issuers"].update(other=d["issuers"]["card-sign"]),
            "unknown certificate kind",
        ),
        (
            lambda d: d["verifier_token"].update(label="jpki-va-root-g1"),
            "every key of the ceremony needs its own label",
        ),
        (lambda d: d.pop("verifier_token"), "[verifier_token] is missing"),
    ],
)
def test_bad_config_is_refused_with_a_message(edit: object, message: str) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    edit(data)  # type: ignore[operator]
    with pytest.raises(CeremonyError, match=message.replace("[", r"\[")):
        CeremonyConfig.from_mapping(data, base_dir=EXAMPLE.parent)


def test_ceremony_is_idempotent_and_resumes(hsm: Hsm, tmp_path: Path) -> None:
    settings = _settings()
    config = CeremonyConfig.default(settings)
    # A key left by an interrupted run is certified, not generated again.
    leftover = hsm.generate_key(settings.issuer_label(CertKind.CARD_AUTH, 1), KeyType.RSA_2048)
    registry = Registry(tmp_path / "registry")
    try:
        first = run_ceremony(hsm, registry, FixedClock(NOW), config, record_dir=tmp_path / "rec")
        assert len(first.created) == 7
        card_auth = next(i for i in first.created if i.kind is CertKind.CARD_AUTH)
        assert not card_auth.key_created
        assert card_auth.certificate.public_key() == leftover.public_key()
        second = run_ceremony(hsm, registry, FixedClock(NOW), config, record_dir=tmp_path / "rec")
        assert second.created == [] and second.record is None
        assert len(second.present) == 7
        authority = Authority(hsm, registry)
        key, cert = authority.verifier_token_signer()
        assert cert.public_key() == key.public_key()
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [CertProfile.VERIFIER_TOKEN_SIGNER.extended_key_usage]
    finally:
        registry.close()


def test_existing_key_of_another_type_is_refused(hsm: Hsm, tmp_path: Path) -> None:
    settings = _settings()
    hsm.generate_key(settings.root_label(), KeyType.EC_P256)
    registry = Registry(tmp_path / "registry")
    try:
        with pytest.raises(CeremonyError, match="is not rsa-2048"):
            run_ceremony(
                hsm, registry, FixedClock(NOW), CeremonyConfig.default(settings), record_dir=None
            )
        with registry.read() as tx:
            assert tx.issuers() == []
    finally:
        registry.close()


def test_rotation_of_a_custom_label_and_validity(hsm: Hsm, tmp_path: Path) -> None:
    assert next_label("jpki-va-card-sign-g9", 10) == "jpki-va-card-sign-g10"
    assert next_label("custom", 2) == "custom-g2"
    settings = _settings()
    registry = Registry(tmp_path / "registry")
    try:
        run_ceremony(
            hsm, registry, FixedClock(NOW), CeremonyConfig.default(settings), record_dir=None
        )
        later = FixedClock(NOW + timedelta(days=30))
        rotation = rotate_issuer(
            hsm, registry, later, CertKind.MOBILE_SIGN, validity=timedelta(days=100)
        )
        cert = rotation.new.certificate
        assert cert.subject == rotation.old.certificate.subject
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(
            days=100, minutes=5
        )
        third = rotate_issuer(hsm, registry, later, CertKind.MOBILE_SIGN)
        assert third.new.key_label == settings.issuer_label(CertKind.MOBILE_SIGN, 3)
        with registry.read() as tx:
            mobile = [r for r in tx.issuers() if r.kind is CertKind.MOBILE_SIGN]
        assert sorted(r.active for r in mobile) == [False, False, True]
    finally:
        registry.close()


def test_lint_catches_profile_and_issuer_mistakes() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = cert_profile.root_certificate(root_key, NOW, NOW + timedelta(days=100))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    snapshot = cert_profile.snapshot_signer_certificate(
        root_key, root, leaf_key.public_key(), NOW, NOW + timedelta(days=10)
    )
    lint_certificate(
        snapshot,
        profile=CertProfile.SNAPSHOT_SIGNER,
        subject_public_key=leaf_key.public_key(),
        issuer_public_key=root_key.public_key(),
        issuer=root,
    )
    with pytest.raises(LintError, match="extendedKeyUsage is not exactly"):
        lint_certificate(
            snapshot,
            profile=CertProfile.VERIFIER_TOKEN_SIGNER,
            subject_public_key=leaf_key.public_key(),
            issuer_public_key=root_key.public_key(),
            issuer=root,
        )
    with pytest.raises(LintError, match="basicConstraints cA is False") as info:
        lint_certificate(
            snapshot,
            profile=CertProfile.ISSUING_CA,
            subject_public_key=root_key.public_key(),
            issuer_public_key=leaf_key.public_key(),
            issuer=root,
        )
    text = str(info.value)
    assert "certified public key is not the ceremony's key" in text
    assert "signature does not verify" in text
    assert "CA keyUsage lacks keyCertSign" in text
    # Validity outside the issuer's: built by hand, the profile functions clamp it.
    too_long = cert_profile.snapshot_signer_certificate(
        root_key, root, leaf_key.public_key(), NOW - timedelta(days=1), NOW + timedelta(days=10)
    )
    with pytest.raises(LintError, match="not inside the issuer's validity"):
        lint_certificate(
            too_long,
            profile=CertProfile.SNAPSHOT_SIGNER,
            subject_public_key=leaf_key.public_key(),
            issuer_public_key=root_key.public_key(),
            issuer=root,
        )
