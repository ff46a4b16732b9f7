"""`jpki-va hsm` end to end, each run in a process of its own with its own SoftHSM2 token.

Acceptance of the key ceremony: the example config creates every key and certificate;
running it again changes nothing; openssl verifies every issuing CA against the root;
pkcs11-tool shows every private key sensitive, never extractable and private.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jpki_va.core.domain import CertKind
from jpki_va.core.oids import OID_SNAPSHOT_SIGNING, OID_VERIFIER_TOKEN_SIGNING
from jpki_va.hsm import DEFAULT_MODULE
from jpki_va.server.registry.transactions import Registry
from tests.support import JPKI_VA, REPO, openssl

EXAMPLE = REPO / "examples" / "ceremony.toml"
PIN = "cli-user-pin"
TOKEN = "cli-ceremony"


def jpki(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("JPKI_VA_", "SOFTHSM2"))}
    full.update(env)
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [*JPKI_VA, *args],
        capture_output=True,
        text=True,
        env=full,
        input=stdin if stdin is not None else "",
        check=False,
        timeout=180,
    )


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A token made by `hsm init-token`, and the ceremony of examples/ run on it."""
    base = tmp_path_factory.mktemp("hsm-cli")
    env = {"JPKI_VA_HSM_PIN": PIN, "JPKI_VA_HSM_SO_PIN": "cli-so-pin"}
    made = jpki("hsm", "init-token", "--dir", str(base / "token"), "--hsm-token", TOKEN, env=env)
    assert made.returncode == 0, made.stderr
    conf = str(base / "token" / "softhsm2.conf")
    common = ["--hsm-token", TOKEN, "--softhsm2-conf", conf]
    data = base / "data"
    first = jpki("hsm", "ceremony", "run", str(EXAMPLE), "--data-dir", str(data), *common, env=env)
    assert first.returncode == 0, first.stderr
    return {"env": env, "common": common, "data": data, "conf": conf, "first": first.stdout}


def _env(ops: dict[str, object]) -> dict[str, str]:
    env = ops["env"]
    assert isinstance(env, dict)
    return env


def _common(ops: dict[str, object]) -> list[str]:
    common = ops["common"]
    assert isinstance(common, list)
    return common


def _certificates(data: Path) -> tuple[x509.Certificate, dict[str, x509.Certificate]]:
    registry = Registry(data / "registry")
    try:
        with registry.read() as tx:
            issuers = tx.issuers()
            signers = {name: tx.meta(name) for name in ("snapshot_signer", "verifier_token_signer")}
    finally:
        registry.close()
    root = next(r.certificate for r in issuers if r.kind is None)
    certs = {r.key_label: r.certificate for r in issuers if r.kind is not None}
    for name, raw in signers.items():
        assert raw is not None, name
        meta = json.loads(raw)
        certs[meta["label"]] = x509.load_der_x509_certificate(base64.b64decode(meta["certificate"]))
    return root, certs


def test_ceremony_creates_everything_and_a_record(ops: dict[str, object]) -> None:
    out = str(ops["first"])
    for label in (
        "jpki-va-root-g1",
        *(f"jpki-va-{k.slug}-g1" for k in CertKind),
        "jpki-va-snapshot",
        "jpki-va-verifier-token",
    ):
        assert f"({label}, new key)" in out
    data = ops["data"]
    assert isinstance(data, Path)
    (record,) = (data / "ceremonies").glob("*-ceremony.json")
    content = json.loads(record.read_text())
    assert len(content["created"]) == 7
    root, certs = _certificates(data)
    by_label = {item["label"]: item for item in content["created"]}
    for label, cert in {**certs, "jpki-va-root-g1": root}.items():
        assert by_label[label]["certificate_sha256"] == cert.fingerprint(hashes.SHA256()).hex()


def test_second_run_changes_nothing(ops: dict[str, object]) -> None:
    data = ops["data"]
    assert isinstance(data, Path)
    before = (data / "registry" / "data.mdb").read_bytes()
    again = jpki(
        "hsm", "ceremony", "run", str(EXAMPLE), "--data-dir", str(data), *_common(ops),
        env=_env(ops),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert len(list((data / "ceremonies").glob("*.json"))) == 1
    registry = Registry(data / "registry")
    try:
        with registry.read() as tx:
            assert len(tx.issuers()) == 5
    finally:
        registry.close()
    assert (data / "registry" / "data.mdb").read_bytes() == before


def test_openssl_verifies_every_certificate_against_the_root(
    ops: dict[str, object], tmp_path: Path
) -> None:
    data = ops["data"]
    assert isinstance(data, Path)
    root, certs = _certificates(data)
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    assert len(certs) == 6
    for label, cert in certs.items():
        path = tmp_path / f"{label}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        result = openssl("verify", "-CAfile", str(root_pem), str(path), check=False)
        assert result.returncode == 0, (label, result.stdout, result.stderr)
    eku = {
        label: cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        for label, cert in certs.items()
        if label in ("jpki-va-snapshot", "jpki-va-verifier-token")
    }
    assert list(eku["jpki-va-snapshot"]) == [OID_SNAPSHOT_SIGNING]
    assert list(eku["jpki-va-verifier-token"]) == [OID_VERIFIER_TOKEN_SIGNING]
    assert isinstance(certs["jpki-va-verifier-token"].public_key(), ec.EllipticCurvePublicKey)


def test_pkcs11_tool_shows_every_private_key_sensitive_and_never_extractable(
    ops: dict[str, object],
) -> None:
    env = dict(os.environ, SOFTHSM2_CONF=str(ops["conf"]))
    base = ["pkcs11-tool", "--module", DEFAULT_MODULE, "--token-label", TOKEN, "--list-objects"]
    listed = subprocess.run(
        [*base, "--type", "privkey", "--login", "--pin", PIN],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    blocks = listed.stdout.split("Private Key Object")[1:]
    assert len(blocks) == 7, listed.stdout
    for block in blocks:
        access = next(line for line in block.splitlines() if "Access:" in line)
        flags = {f.strip() for f in access.split(":", 1)[1].split(",")}
        assert {"sensitive", "always sensitive", "never extractable", "local"} <= flags, block
        assert "extractable" not in flags, block
    # CKA_PRIVATE: without a login the private keys are not even visible.
    anonymous = subprocess.run(
        [*base, "--type", "privkey"], capture_output=True, text=True, env=env, check=True
    )
    assert "Private Key Object" not in anonymous.stdout


def test_keys_list_shows_flags_and_ceremony(ops: dict[str, object]) -> None:
    listed = jpki(
        "hsm", "keys", "list", "--json", "--data-dir", str(ops["data"]), *_common(ops),
        env=_env(ops),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 7
    for row in rows:
        assert row["sensitive"] and row["private"] and row["never_extractable"]
        assert not row["extractable"]
        assert row["ceremony"] and row["ceremony"].endswith("-ceremony.json")


def test_info_reports_token_and_mechanisms(ops: dict[str, object]) -> None:
    shown = jpki("hsm", "info", "--json", "--softhsm2-conf", str(ops["conf"]), env={})
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    (slot,) = [s for s in info["slots"] if s["token"]["label"] == TOKEN]
    assert slot["token"]["serial"]
    assert slot["mechanisms"] == {"RSA_PKCS": True, "SHA256_RSA_PKCS": True, "ECDSA": True}
    assert "free" in slot["token"]["public_memory"]


def test_generate_public_destroy(ops: dict[str, object], tmp_path: Path) -> None:
    common, env = _common(ops), _env(ops)
    made = jpki(
        "hsm", "keys", "generate", "--label", "spare", "--type", "ec-p256", *common, env=env
    )
    assert made.returncode == 0, made.stderr
    dup = jpki("hsm", "keys", "generate", "--label", "spare", "--type", "ec-p256", *common, env=env)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    pem = tmp_path / "spare.pem"
    shown = jpki("hsm", "keys", "public", "--label", "spare", "--out", str(pem), *common, env=env)
    assert shown.returncode == 0, shown.stderr
    assert isinstance(
        serialization.load_pem_public_key(pem.read_bytes()), ec.EllipticCurvePublicKey
    )
    data = ["--data-dir", str(ops["data"])]
    unconfirmed = jpki("hsm", "keys", "destroy", "--label", "spare", *data, *common, env=env)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    gone = jpki("hsm", "keys", "destroy", "--label", "spare", "--yes", *data, *common, env=env)
    assert gone.returncode == 0, gone.stderr
    missing = jpki("hsm", "keys", "public", "--label", "spare", *common, env=env)
    assert missing.returncode == 1 and "no private key" in missing.stderr


@pytest.mark.parametrize("label", ["jpki-va-root-g1", "jpki-va-card-auth-g1", "jpki-va-snapshot"])
def test_destroy_refuses_keys_in_use(ops: dict[str, object], label: str) -> None:
    refused = jpki(
        "hsm", "keys", "destroy", "--label", label, "--yes", "--data-dir", str(ops["data"]),
        *_common(ops), env=_env(ops),
    )  # fmt: skip
    assert refused.returncode == 1
    assert "in use" in refused.stderr and "not destroyed" in refused.stderr


def test_no_pin_without_a_terminal_is_a_clear_error(ops: dict[str, object]) -> None:
    result = jpki("hsm", "keys", "list", *_common(ops), env={})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no PIN given" in result.stderr


def test_wrong_pin_file_is_refused_without_echo(ops: dict[str, object], tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("not-the-pin\n")
    result = jpki("hsm", "keys", "list", "--pin-file", str(pin), *_common(ops), env={})
    assert result.returncode == 1 and "refused the login" in result.stderr
    assert "not-the-pin" not in result.stderr + result.stdout


def test_bad_ceremony_config_is_a_usage_error(ops: dict[str, object], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        EXAMPLE.read_text().replace('profile = "snapshot-signer"', 'profile = "root-ca"')
    )
    result = jpki(
        "hsm", "ceremony", "run", str(bad), "--data-dir", str(tmp_path / "d"), *_common(ops),
        env=_env(ops),
    )  # fmt: skip
    assert result.returncode == 2
    assert "snapshot: profile must be 'snapshot-signer'" in result.stderr
    assert not (tmp_path / "d").exists()


def test_rotate_then_issue_a_delegated_ocsp_signer(ops: dict[str, object], tmp_path: Path) -> None:
    common, env = _common(ops), _env(ops)
    data = ["--data-dir", str(ops["data"])]
    rotated = jpki("hsm", "ca", "rotate", "--kind", "mobile-auth", *data, *common, env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert "jpki-va-mobile-auth-g1" in rotated.stdout and "jpki-va-mobile-auth-g2" in rotated.stdout
    listed = jpki("hsm", "ca", "list", *data, *common, env=env)
    lines = [line for line in listed.stdout.splitlines() if line.startswith("MOBILE_AUTH")]
    assert [line.split()[2] for line in lines] == ["inactive", "active"]

    key = ec.generate_private_key(ec.SECP256R1())
    csr = tmp_path / "ocsp.csr"
    csr.write_bytes(
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ops responder")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    out = tmp_path / "ocsp-certs.pem"
    issued = jpki(
        "hsm", "ocsp-signer", "issue", "--csr", str(csr), "--kind", "mobile-auth",
        "--out", str(out), *data, *common, env=env,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    (cert,) = x509.load_pem_x509_certificates(out.read_bytes())
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days == 7  # 7 days plus the 5-minute backdate
    root, certs = _certificates(Path(str(ops["data"])))
    issuer = certs["jpki-va-mobile-auth-g2"]
    cert.verify_directly_issued_by(issuer)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(
        root.public_bytes(serialization.Encoding.PEM)
        + issuer.public_bytes(serialization.Encoding.PEM)
    )
    result = openssl(
        "verify", "-CAfile", str(chain), "-purpose", "ocsphelper", str(out), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

    bad = jpki(
        "hsm", "ocsp-signer", "issue", "--csr", str(out), "--out", str(tmp_path / "x.pem"),
        *data, *common, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and "not a PKCS#10 request" in bad.stderr
    bad_validity = jpki(
        "hsm", "ocsp-signer", "issue", "--csr", str(csr), "--validity", "a week",
        "--out", str(tmp_path / "x.pem"), *data, *common, env=env,
    )  # fmt: skip
    assert bad_validity.returncode == 2 and "3650d" in bad_validity.stderr
