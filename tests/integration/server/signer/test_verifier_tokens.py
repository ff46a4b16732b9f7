"""Verifier tokens (第38条の3), the verifier registry commands, and the signer's mTLS."""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import date, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va.client import InvalidVerifierToken, Role, verify_verifier_token
from jpki_va.core.clock import JST
from jpki_va.core.domain import Provision
from jpki_va.protos import signer_pb2_grpc, va_pb2, verifiers_pb2, verifiers_pb2_grpc
from jpki_va.server.app.config import SignerConfig, TlsFiles
from jpki_va.server.app.signer_app import start_signer
from jpki_va.server.ledger.report import Period
from jpki_va.server.rpc.identity import fingerprint
from tests.support import JPKI_VA, REPO, Pki, throwaway_certificate
from tests.support.tls import TlsCa, TlsIdentity


def _add(pki: Pki, name: str, roles: set[Role], agreement: str = "") -> None:
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=name,
            roles=[int(r) for r in roles],  # type: ignore[misc]
            client_certificate_der=[
                throwaway_certificate(name).public_bytes(serialization.Encoding.DER)
            ],
            agreement=agreement,
        ),
        timeout=30,
    )


def _request(pki: Pki, name: str) -> verifiers_pb2.IssueVerifierTokenResponse:
    return pki.signer_stub.IssueVerifierToken(
        verifiers_pb2.IssueVerifierTokenRequest(),
        timeout=30,
        metadata=(("x-jpki-verifier", name),),
    )


def test_token_is_issued_counted_and_verified_offline(pki: Pki) -> None:
    _add(pki, "tok-specific", {Role.SPECIFIC_AUTH_VERIFIER}, agreement="AG-2026-001")
    reply = _request(pki, "tok-specific")
    token = verify_verifier_token(reply.token, pki.root)
    assert token.verifier_id == "tok-specific"
    assert token.roles == {Role.SPECIFIC_AUTH_VERIFIER}
    assert token.agreement == "AG-2026-001"
    assert token.not_after == reply.not_after.ToDatetime().replace(tzinfo=token.not_after.tzinfo)
    assert token.cert_fingerprint is None  # asked over plaintext: bound to no certificate
    counts = pki.signer.ledger.counts(
        Period.calendar_year(token.issued_at.year).start,
        Period.calendar_year(token.issued_at.year).end,
    )
    assert any(
        c.provision is Provision.VERIFIER_TOKEN and c.verifier_id == "tok-specific" for c in counts
    )
    # Offline checks fail on anything altered, expired or from another root.
    header, payload, signature = reply.token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    data["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidVerifierToken, match="signature"):
        verify_verifier_token(f"{header}.{forged}.{signature}", pki.root)
    with pytest.raises(InvalidVerifierToken, match="valid from"):
        verify_verifier_token(reply.token, pki.root, now=token.not_after + timedelta(seconds=1))
    with pytest.raises(InvalidVerifierToken, match="not issued by the root"):
        verify_verifier_token(reply.token, throwaway_certificate("other-root"))
    for garbage in ("", "a.b", "x.y.z", reply.token + "x"):
        with pytest.raises(InvalidVerifierToken):
            verify_verifier_token(garbage, pki.root)


def test_token_refusals(pki: Pki) -> None:
    _add(pki, "tok-auth", {Role.AUTH_VERIFIER})
    _add(pki, "tok-no-agreement", {Role.SPECIFIC_AUTH_VERIFIER})
    with pytest.raises(grpc.RpcError) as info:
        _request(pki, "tok-auth")
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "SPECIFIC_AUTH_VERIFIER" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        _request(pki, "tok-no-agreement")
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "取決め" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        _request(pki, "tok-nobody")
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_responder_checks_a_token_against_the_current_registry(pki: Pki) -> None:
    _add(pki, "tok-online", {Role.SPECIFIC_AUTH_VERIFIER}, agreement="AG-7")
    token = _request(pki, "tok-online").token
    pki.publish_and_wait()
    stub = verifiers_pb2_grpc.VerifierTokenServiceStub(grpc.insecure_channel(pki.responder_address))
    reply = stub.CheckVerifierToken(
        verifiers_pb2.CheckVerifierTokenRequest(token=token), timeout=10
    )
    assert reply.valid, reply.reason
    assert reply.verifier_id == "tok-online"
    assert list(reply.roles) == [verifiers_pb2.VERIFIER_ROLE_SPECIFIC_AUTH_VERIFIER]
    bad = stub.CheckVerifierToken(verifiers_pb2.CheckVerifierTokenRequest(token="x.y.z"))
    assert not bad.valid and bad.reason
    # Removing the verifier withdraws its tokens at the next snapshot.
    pki.signer_stub.RemoveVerifier(verifiers_pb2.RemoveVerifierRequest(id="tok-online"))
    pki.publish_and_wait()
    reply = stub.CheckVerifierToken(
        verifiers_pb2.CheckVerifierTokenRequest(token=token), timeout=10
    )
    assert not reply.valid
    assert "not registered" in reply.reason


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JPKI_VA, *args],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip


def test_registry_verifier_commands(pki: Pki, tmp_path: Path) -> None:
    signer = ["--signer", f"127.0.0.1:{pki.signer.port}", "--insecure-loopback"]
    cert = tmp_path / "bank.pem"
    cert.write_bytes(throwaway_certificate("bank").public_bytes(serialization.Encoding.PEM))
    added = _cli("registry", "verifier", "add", "--id", "cli-bank", "--cert", str(cert),
                 "--role", "signing-verifier", "--role", "auth-verifier", *signer)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["roles"] == ["signing-verifier", "auth-verifier"]
    again = _cli("registry", "verifier", "add", "--id", "cli-bank", "--cert", str(cert),
                 "--role", "auth-verifier", *signer)  # fmt: skip
    assert again.returncode == 3
    assert "FAILED_PRECONDITION" in again.stderr and "exists" in again.stderr
    # The same certificate cannot identify two verifiers.
    other = _cli("registry", "verifier", "add", "--id", "cli-other", "--cert", str(cert),
                 "--role", "auth-verifier", *signer)  # fmt: skip
    assert other.returncode == 3 and "already identifies" in other.stderr
    listed = _cli("registry", "verifier", "list", "--json", *signer)
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert "cli-other" not in rows
    assert rows["cli-bank"]["cert_fingerprints"] == [
        fingerprint(x509.load_pem_x509_certificate(cert.read_bytes())).hex()
    ]
    bad = _cli("registry", "verifier", "add", "--id", "bad id!", "--cert", str(cert),
               "--role", "auth-verifier", *signer)  # fmt: skip
    assert bad.returncode == 3 and "verifier id" in bad.stderr
    agreement = _cli("registry", "verifier", "add", "--id", "cli-x", "--cert", str(cert),
                     "--role", "auth-verifier", "--agreement", "A", *signer)  # fmt: skip
    assert agreement.returncode == 3 and "specific auth verifier" in agreement.stderr
    assert _cli("registry", "verifier", "remove", "--id", "cli-bank", *signer).returncode == 0
    gone = _cli("registry", "verifier", "remove", "--id", "cli-bank", *signer)
    assert gone.returncode == 3 and "NOT_FOUND" in gone.stderr
    usage = _cli("registry", "verifier", "list", "--signer", "10.0.0.1:1", "--insecure-loopback")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1


def test_token_commands(pki: Pki, tmp_path: Path) -> None:
    _add(pki, "tok-cli", {Role.SPECIFIC_AUTH_VERIFIER}, agreement="AG-CLI")
    out = tmp_path / "token.jws"
    requested = _cli("token", "request", "--signer", f"127.0.0.1:{pki.signer.port}",
                     "--insecure-loopback", "--verifier", "tok-cli", "--out", str(out))  # fmt: skip
    assert requested.returncode == 0, requested.stderr
    verified = _cli("token", "verify", "--token", str(out), "--root", str(pki.root_file))
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["verifier"] == "tok-cli"
    out.write_text(out.read_text().replace(".", ".x", 1))
    rejected = _cli("token", "verify", "--token", str(out), "--root", str(pki.root_file))
    assert rejected.returncode == 1 and "invalid" in rejected.stderr


def test_signer_over_mtls(pki: Pki, tmp_path: Path) -> None:
    """Operators by certificate; a verifier's token is bound to the certificate it used."""
    ca = TlsCa(tmp_path / "tls")
    server = ca.issue("signer", server=True)
    operator, verifier, stranger = ca.issue("operator"), ca.issue("specific"), ca.issue("x")
    app = start_signer(
        SignerConfig(
            data_dir=tmp_path / "signer",
            hsm=pki.signer.config.hsm,
            listen="127.0.0.1:0",
            tls=TlsFiles(server.cert, server.key, ca.cert_file),
            operator_certs=(operator.cert,),
            delta_interval=0,
            bootstrap=True,
        )
    )
    channels = []

    def stub(who: TlsIdentity) -> signer_pb2_grpc.SignerServiceStub:
        channel = grpc.secure_channel(f"127.0.0.1:{app.port}", ca.channel_credentials(who))
        channels.append(channel)
        return signer_pb2_grpc.SignerServiceStub(channel)

    try:
        stub(operator).AddVerifier(
            verifiers_pb2.AddVerifierRequest(
                id="specific",
                roles=[verifiers_pb2.VERIFIER_ROLE_SPECIFIC_AUTH_VERIFIER],
                client_certificate_der=[verifier.der],
                agreement="AG-TLS",
            ),
            timeout=30,
        )
        for who in (verifier, stranger):
            with pytest.raises(grpc.RpcError) as info:
                stub(who).ListVerifiers(verifiers_pb2.ListVerifiersRequest(), timeout=30)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "not an operator" in (info.value.details() or "")
        root_der = stub(operator).ListIssuers(va_pb2.ListIssuersRequest()).root_certificate_der
        reply = stub(verifier).IssueVerifierToken(
            verifiers_pb2.IssueVerifierTokenRequest(),
            timeout=30,
            metadata=(("x-jpki-verifier", "someone-else"),),  # ignored over TLS
        )
        token = verify_verifier_token(reply.token, x509.load_der_x509_certificate(root_der))
        assert token.verifier_id == "specific"
        assert token.cert_fingerprint == fingerprint(verifier.certificate)
        with pytest.raises(grpc.RpcError) as info:
            stub(stranger).IssueVerifierToken(verifiers_pb2.IssueVerifierTokenRequest())
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        for channel in channels:
            channel.close()
        app.stop()


def test_article_38_3_agreement_terms_and_period(pki: Pki) -> None:
    """The 取決め records its terms and effective period; no token outside the period."""
    today = pki.clock.now().astimezone(JST).date()

    def add(name: str, start: date, until: date) -> verifiers_pb2.AddVerifierResponse:
        return pki.signer_stub.AddVerifier(
            verifiers_pb2.AddVerifierRequest(
                id=name,
                roles=[int(Role.SPECIFIC_AUTH_VERIFIER)],  # type: ignore[list-item]
                client_certificate_der=[
                    throwaway_certificate(name).public_bytes(serialization.Encoding.DER)
                ],
                agreement=f"AG-{name}",
                agreement_date=start.isoformat(),
                agreement_terms="token use limited to account opening; terms v1",
                agreement_until=until.isoformat(),
            ),
            timeout=30,
        )

    added = add("tok-in-period", today - timedelta(days=30), today + timedelta(days=30))
    assert added.verifier.agreement_terms.startswith("token use limited")
    assert added.verifier.agreement_until == (today + timedelta(days=30)).isoformat()
    add("tok-ended", today - timedelta(days=60), today - timedelta(days=1))
    add("tok-future", today + timedelta(days=1), today + timedelta(days=60))

    def tokens() -> int:
        year = Period.calendar_year(today.year)
        return sum(
            c.count
            for c in pki.signer.ledger.counts(year.start, year.end)
            if c.provision is Provision.VERIFIER_TOKEN
        )

    before = tokens()
    for name, fragment in (("tok-ended", "ended on"), ("tok-future", "takes effect on")):
        with pytest.raises(grpc.RpcError) as info:
            _request(pki, name)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert fragment in (info.value.details() or "")
    assert tokens() == before  # refused: nothing given, nothing counted
    assert _request(pki, "tok-in-period").token
    assert tokens() == before + 1
    with pytest.raises(grpc.RpcError) as info:
        add("tok-backwards", today, today - timedelta(days=1))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "ends before it begins" in (info.value.details() or "")
