"""Key generation and signing through SoftHSM2, checked by cryptography and openssl."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from jpki_va.hsm import (
    Hsm,
    HsmConfig,
    HsmEcPrivateKey,
    HsmPrivateKey,
    HsmRsaPrivateKey,
    KeyExists,
    KeyExportRefused,
    KeyNotFound,
    KeyType,
    SigningFailed,
    UnsupportedAlgorithm,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _label(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _verify(key: HsmPrivateKey, signature: bytes, data: bytes, alg: hashes.HashAlgorithm) -> None:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(signature, data, padding.PKCS1v15(), alg)
    else:
        pub.verify(signature, data, ec.ECDSA(alg))


def _ca_cert(key: HsmPrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_generated_key_signs_cert_crl_csr_verified_by_openssl(
    hsm: Hsm, key_type: KeyType, tmp_path: Path
) -> None:
    key = hsm.generate_key(_label(f"gen-{key_type.value}"), key_type)
    expected_cls = HsmEcPrivateKey if key_type is KeyType.EC_P256 else HsmRsaPrivateKey
    assert isinstance(key, expected_cls)
    assert key.hsm is hsm
    assert key.key_size == {"rsa-2048": 2048, "rsa-3072": 3072, "ec-p256": 256}[key_type.value]

    cert = _ca_cert(key, "HSM test CA")
    cert.verify_directly_issued_by(cert)
    cert_pem = tmp_path / "ca.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    res = _openssl("verify", "-CAfile", str(cert_pem), str(cert_pem))
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout

    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(NOW)
        .next_update(NOW + dt.timedelta(hours=12))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(12345)
            .revocation_date(NOW - dt.timedelta(hours=1))
            .build()
        )
        .sign(key, hashes.SHA384())
    )
    assert crl.is_signature_valid(key.public_key())
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    res = _openssl("crl", "-in", str(crl_pem), "-CAfile", str(cert_pem), "-noout", "-verify")
    assert res.returncode == 0, res.stderr
    assert "verify OK" in res.stderr + res.stdout

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocsp signer")]))
        .sign(key, hashes.SHA256())
    )
    assert csr.is_signature_valid
    csr_pem = tmp_path / "csr.pem"
    csr_pem.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    res = _openssl("req", "-in", str(csr_pem), "-verify", "-noout")
    assert res.returncode == 0, res.stderr
    assert "verify OK" in res.stderr + res.stdout


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.EC_P256])
def test_ocsp_response_signed_by_hsm_key(hsm: Hsm, key_type: KeyType) -> None:
    key = hsm.generate_key(_label("ocsp"), key_type)
    ca = _ca_cert(key, "OCSP CA")
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=ca,
            issuer=ca,
            algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW,
            next_update=NOW + dt.timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca)
    )
    resp = builder.sign(key, hashes.SHA256())
    _verify(key, resp.signature, resp.tbs_response_bytes, hashes.SHA256())


@pytest.mark.parametrize("alg", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_rsa_pkcs1_prehashed_and_pss(hsm: Hsm, alg: hashes.HashAlgorithm) -> None:
    key = hsm.find_or_generate("rsa-algos", KeyType.RSA_2048)
    assert isinstance(key, HsmRsaPrivateKey)
    data = b"to be signed"
    _verify(key, key.sign(data, padding.PKCS1v15(), alg), data, alg)

    h = hashes.Hash(alg)
    h.update(data)
    sig = key.sign(h.finalize(), padding.PKCS1v15(), utils.Prehashed(alg))
    _verify(key, sig, data, alg)

    pss = padding.PSS(mgf=padding.MGF1(alg), salt_length=padding.PSS.DIGEST_LENGTH)
    key.public_key().verify(key.sign(data, pss, alg), data, pss, alg)
    pss_max = padding.PSS(mgf=padding.MGF1(alg), salt_length=padding.PSS.MAX_LENGTH)
    key.public_key().verify(key.sign(data, pss_max, alg), data, pss_max, alg)


@pytest.mark.parametrize("alg", [hashes.SHA256(), hashes.SHA384()])
def test_ecdsa_hash_and_prehashed(hsm: Hsm, alg: hashes.HashAlgorithm) -> None:
    key = hsm.find_or_generate("ec-algos", KeyType.EC_P256)
    assert isinstance(key, HsmEcPrivateKey)
    data = b"to be signed"
    _verify(key, key.sign(data, ec.ECDSA(alg)), data, alg)
    h = hashes.Hash(alg)
    h.update(data)
    _verify(key, key.sign(h.finalize(), ec.ECDSA(utils.Prehashed(alg))), data, alg)


def test_private_material_is_refused(hsm: Hsm) -> None:
    rsa_key = hsm.find_or_generate("refuse-rsa", KeyType.RSA_2048)
    ec_key = hsm.find_or_generate("refuse-ec", KeyType.EC_P256)
    for key in (rsa_key, ec_key):
        with pytest.raises(KeyExportRefused):
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        with pytest.raises(KeyExportRefused):
            key.private_numbers()
        assert "label=" in repr(key)
    assert isinstance(rsa_key, HsmRsaPrivateKey)
    assert isinstance(ec_key, HsmEcPrivateKey)
    with pytest.raises(UnsupportedAlgorithm):
        rsa_key.decrypt(b"x", padding.PKCS1v15())
    with pytest.raises(UnsupportedAlgorithm):
        ec_key.exchange(ec.ECDH(), ec_key.public_key())


def test_list_keys_reports_token_flags(hsm: Hsm) -> None:
    label = _label("listed")
    hsm.generate_key(label, KeyType.EC_P256)
    infos = [i for i in hsm.list_keys() if i.label == label]
    assert len(infos) == 1
    info = infos[0]
    assert info.key_type is KeyType.EC_P256
    assert info.size == 256
    assert len(bytes.fromhex(info.id)) == 16
    assert info.sensitive and info.private and info.always_sensitive and info.never_extractable
    assert not info.extractable


def test_pkcs11_tool_sees_sensitive_never_extractable_keys(
    hsm: Hsm, softhsm_token: HsmConfig
) -> None:
    label = _label("p11tool")
    hsm.generate_key(label, KeyType.RSA_2048)
    assert softhsm_token.softhsm2_conf is not None
    env = dict(os.environ)
    env["SOFTHSM2_CONF"] = softhsm_token.softhsm2_conf
    env["JPKI_TEST_P11_PIN"] = softhsm_token.pin.read()  # --pin env:VAR keeps it off argv
    res = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            softhsm_token.module,
            "--token-label",
            softhsm_token.token_label,
            "--list-objects",
            "--type",
            "privkey",
            "--login",
            "--pin",
            "env:JPKI_TEST_P11_PIN",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    blocks = res.stdout.split("Private Key Object")[1:]
    assert blocks, res.stdout
    assert any(f"label:      {label}" in b for b in blocks), res.stdout
    for block in blocks:
        access = next(line for line in block.splitlines() if "Access:" in line)
        assert "sensitive" in access and "never extractable" in access, block
        assert " extractable" not in access.replace("never extractable", ""), block


def test_key_exists_and_not_found_and_destroy(hsm: Hsm) -> None:
    label = _label("lifecycle")
    hsm.generate_key(label, KeyType.EC_P256)
    with pytest.raises(KeyExists):
        hsm.generate_key(label, KeyType.RSA_2048)
    with pytest.raises(KeyExists):
        hsm.find_or_generate(label, KeyType.RSA_2048)  # exists with another type
    assert hsm.find_or_generate(label, KeyType.EC_P256).label == label
    hsm.destroy_key(label)
    with pytest.raises(KeyNotFound):
        hsm.key(label)
    with pytest.raises(KeyNotFound):
        hsm.destroy_key(label)
    with pytest.raises(KeyNotFound):
        hsm.sign(label, "ECDSA", b"\0" * 32)
    assert all(i.label != label for i in hsm.list_keys())


def test_signing_failure_carries_ckr(hsm: Hsm) -> None:
    label = _label("ckr")
    hsm.generate_key(label, KeyType.EC_P256)
    before = hsm.reconnects
    with pytest.raises(SigningFailed) as info:
        hsm.sign(label, "SHA256_RSA_PKCS", b"data")  # RSA mechanism on an EC key
    # SoftHSM2 2.6 answers CKR_GENERAL_ERROR here; other modules KEY_TYPE_INCONSISTENT.
    assert info.value.ckr in {"GeneralError", "KeyTypeInconsistent", "MechanismInvalid"}
    assert hsm.reconnects == before  # a bad request is not a dead session
    with pytest.raises(UnsupportedAlgorithm):
        hsm.sign(label, "NO_SUCH_MECHANISM", b"data")
