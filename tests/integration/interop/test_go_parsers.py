"""Go's crypto/x509 and golang.org/x/crypto/ocsp read every certificate, CRL (full,
delta, empty delta, the root's ARL) and OCSP response we emit, and check each
signature. Go rejects OID arcs over 64 bits: the old 2.25.<UUID> arc failed here."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from jpki_va.core.domain import CertKind
from jpki_va.core.oids import OID_LOSS_CAUSE, policy_oid
from jpki_va.server.snapshot.manifest import ISSUERS, SIGNER_CERT, snapshot_dirname
from tests.integration.interop.conftest import Demo
from tests.support import Issued, Pki

_SOURCE = Path(__file__).with_name("go") / "parse.go"
# Debian's golang-golang-x-crypto-dev puts x/crypto on this GOPATH.
_GOPATH = "/usr/share/gocode"


@pytest.fixture(scope="module")
def go_parse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        pytest.fail("go is missing: ./tasks installs golang-go")
    out = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": _GOPATH,
        "GOCACHE": str(out / "cache"),
        "GOFLAGS": "",
    }
    binary = out / "parse"
    subprocess.run(
        ["go", "build", "-o", str(binary), str(_SOURCE)], env=env, check=True, timeout=300
    )
    return binary


def _der(directory: Path, name: str, data: bytes) -> str:
    path = directory / name
    path.write_bytes(data)
    return str(path)


def _ocsp(pki: Pki, issued: Issued) -> bytes:
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.issuer, hashes.SHA256())
        .build()
        .public_bytes(Encoding.DER)
    )
    post = urllib.request.Request(
        f"{pki.http_url}/ocsp",
        data=request,
        headers={"Content-Type": "application/ocsp-request"},
        method="POST",
    )
    with urllib.request.urlopen(post, timeout=10) as reply:
        return bytes(reply.read())


def test_go_reads_every_certificate_crl_and_ocsp_response(
    linked_pki: Pki, demo: Demo, go_parse: Path, tmp_path: Path
) -> None:
    pki = linked_pki
    root = _der(tmp_path, "root.der", pki.root.public_bytes(Encoding.DER))
    snapshots = pki.signer.config.snapshot_dir
    full = snapshots / snapshot_dirname(demo.full_sequence)
    delta = snapshots / snapshot_dirname(demo.delta_sequence)
    issuers = {}
    lines = [f"cert {root} {root}"]
    for cert in x509.load_pem_x509_certificates((full / ISSUERS).read_bytes()):
        kid = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
        issuers[kid] = _der(tmp_path, f"ca-{kid.hex()[:16]}.der", cert.public_bytes(Encoding.DER))
        lines.append(f"cert {issuers[kid]} {root}")
    snapshot_signer = x509.load_pem_x509_certificate((full / SIGNER_CERT).read_bytes())
    lines.append(
        f"cert {_der(tmp_path, 'snap.der', snapshot_signer.public_bytes(Encoding.DER))} {root}"
    )
    holders = {
        "good": demo.good,
        "revoked": demo.revoked,
        "card": demo.card,
        "cascaded": demo.cascaded,
        "revoked_in_delta": demo.revoked_in_delta,
        "card_auth": demo.card_auth,
        "mobile_auth": demo.mobile_auth,
    }
    for name, issued in holders.items():
        der = _der(tmp_path, f"{name}.der", issued.certificate.public_bytes(Encoding.DER))
        kid = x509.SubjectKeyIdentifier.from_public_key(issued.issuer.public_key()).digest
        lines.append(f"chain {der} {issuers[kid]} {root}")
        response = _der(tmp_path, f"{name}.ocsp", _ocsp(pki, issued))
        lines.append(f"ocsp {response} {issuers[kid]} {der}")
    crl_files = sorted(full.glob("crls/**/*.crl")) + sorted(delta.glob("crls/**/*.crl"))
    for path in crl_files:
        aki = (
            x509.load_der_x509_crl(path.read_bytes())
            .extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
            .value.key_identifier
        )
        assert aki is not None
        lines.append(f"crl {path} {issuers[aki]}")
    lines.append(f"crl {full / 'arl.crl'} {root}")
    listing = tmp_path / "items"
    listing.write_text("\n".join(lines) + "\n")

    result = subprocess.run(
        [str(go_parse), str(listing)], check=False, capture_output=True, text=True, timeout=120
    )
    out = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(out) == len(lines) and all(line.startswith("OK ") for line in out), out
    by_file = {line.split()[2]: line for line in out}
    # Full, delta and empty delta CRLs of both signing kinds, and the ARL.
    assert sum(p.name.endswith(".delta.crl") for p in crl_files) >= 3
    # Every entry carries the loss cause under our arc, beside the reason code.
    entries = [line for line in out if " entries=" in line and " entries=0 " not in line]
    assert entries and all(f"{OID_LOSS_CAUSE.dotted_string}:true" in line for line in entries)
    assert policy_oid(CertKind.CARD_SIGN.value).dotted_string in by_file[str(tmp_path / "good.der")]
    assert "status=good" in by_file[str(tmp_path / "good.ocsp")]
    assert "status=revoked reason=1 " in by_file[str(tmp_path / "revoked.ocsp")]
    assert "status=revoked reason=5 " in by_file[str(tmp_path / "cascaded.ocsp")]
    assert "status=revoked reason=1 " in by_file[str(tmp_path / "revoked_in_delta.ocsp")]
    assert "status=good" in by_file[str(tmp_path / "mobile_auth.ocsp")]
    assert "status=good" in by_file[str(tmp_path / "card_auth.ocsp")]
