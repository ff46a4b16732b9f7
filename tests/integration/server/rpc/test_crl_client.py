"""CRL files through the client library and `jpki-va crl`, judged by openssl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va.client import AuthorityRevocationList, CertKind, CrlMeta, NotFound, VaClient
from jpki_va.server.cmd.main import main
from tests.support import Issued, Pki, openssl


@pytest.fixture(scope="module")
def issued(pki: Pki) -> Issued:
    card = pki.issue(CertKind.CARD_AUTH, municipality="131016")
    pki.publish_and_wait()
    return card


def test_client_fetches_the_current_crl_and_lists_it(
    pki: Pki, issued: Issued, tmp_path: Path
) -> None:
    with VaClient(pki.responder_address, insecure=True) as client:
        meta, der = client.crl(kind=CertKind.CARD_AUTH, partition="131016")
        listed = client.crls(kind=CertKind.CARD_AUTH, partition="131016")
    assert isinstance(meta, CrlMeta) and meta.current
    assert meta.kind is CertKind.CARD_AUTH and meta.size == len(der)
    assert any(c.number == meta.number and c.current for c in listed)
    crl = tmp_path / "p.crl"
    crl.write_bytes(der)
    issuer = tmp_path / "issuer.pem"
    issuer.write_bytes(issued.issuer.public_bytes(serialization.Encoding.PEM))
    result = openssl("crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(issuer),
                     "-noout", "-verify")  # fmt: skip
    assert "verify OK" in result.stderr


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def test_crl_command_writes_the_file_and_lists(
    pki: Pki, issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.crl"
    base = ["--server", pki.responder_address, "--insecure-loopback"]
    code = _cli("crl", "--kind", "card-auth", "--partition", "131016", "--out", str(out),
                "--json", *base)  # fmt: skip
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    assert out.stat().st_size == meta["size"]
    assert _cli("crl", "--kind", "card-auth", "--list", "--json", *base) == 0
    assert any(c["current"] for c in json.loads(capsys.readouterr().out))


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--kind", "card-auth", "--partition", "131016"], 2, "--out"),
        (["--kind", "card-auth", "--out", "x.crl"], 2, "--partition"),
        (["--kind", "card-auth", "--issuer-key-id", "zz", "--list"], 2, "not hexadecimal"),
        (["--kind", "card-auth", "--partition", "999999", "--out", "x.crl"], 3, "NOT_FOUND"),
        (["--partition", "131016", "--out", "x.crl"], 2, "--kind is required"),
        (["--arl"], 2, "--out FILE is required"),
        (["--arl", "--kind", "card-auth", "--out", "x.crl"], 2, "--arl takes no --kind"),
        (["--arl", "--list"], 2, "not allowed with"),
        (["--arl", "--issuer-key-id", "00" * 8, "--out", "x.arl"], 3, "NOT_FOUND"),
    ],
)
def test_crl_command_refusals(
    pki: Pki,
    issued: Issued,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    base = ["--server", pki.responder_address, "--insecure-loopback"]
    assert _cli("crl", *args, *base) == code
    assert message in capsys.readouterr().err


def test_client_fetches_the_roots_arl(pki: Pki, issued: Issued) -> None:
    with VaClient(pki.responder_address, insecure=True) as client:
        arl = client.authority_revocation_list()
        root_id = pki.root.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
        by_id = client.authority_revocation_list(root_key_id=root_id[:8])
        with pytest.raises(NotFound, match="no ARL"):
            client.authority_revocation_list(root_key_id=b"\x00" * 8)
    assert isinstance(arl, AuthorityRevocationList) and by_id.der == arl.der
    parsed = x509.load_der_x509_crl(arl.der)
    assert parsed.is_signature_valid(pki.root.public_key())  # type: ignore[arg-type]
    assert parsed.issuer == pki.root.subject and len(parsed) == 0  # no issuer key lost
    assert arl.next_update is not None and arl.this_update is not None
    assert arl.this_update < arl.next_update


def test_crl_command_writes_the_arl(
    pki: Pki, issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "root.arl"
    base = ["--server", pki.responder_address, "--insecure-loopback"]
    assert _cli("crl", "--arl", "--out", str(out), "--json", *base) == 0
    meta = json.loads(capsys.readouterr().out)
    assert out.stat().st_size == meta["size"] and meta["number"] >= 1
    result = openssl("crl", "-inform", "DER", "-in", str(out), "-CAfile", str(pki.root_file),
                     "-noout", "-verify")  # fmt: skip
    assert "verify OK" in result.stderr
