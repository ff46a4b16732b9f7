"""CRL files through the client library and `jpki-va crl`, judged by openssl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from jpki_va.client import CertKind, CrlMeta, VaClient
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
