"""`jpki-va registry …`: operator commands into a real signer; bad input changes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jpki_va.core.domain import CertKind, serial_hex
from jpki_va.server.cmd.main import main
from tests.support import Issued, Pki, free_port, openssl, register_verifier


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def registry(pki: Pki, *argv: str) -> list[str]:
    """`jpki-va registry COMMAND …` with the signer connection options after it."""
    return ["registry", *argv, "--signer", f"127.0.0.1:{pki.signer.port}", "--insecure-loopback"]


def mark(pki: Pki) -> str:
    with pki.signer.registry.read() as tx:
        return tx.change_mark()


def snapshots(pki: Pki) -> list[str]:
    return sorted(p.name for p in pki.signer.config.snapshot_dir.glob("snap-*"))


def _pem_key(tmp_path: Path, name: str) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / f"{name}.pub.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, path


def _issue_args(code: str, kind: str, pubkey: Path, out: Path) -> list[str]:
    return [
        "issue", "--kind", kind, "--resident-code", code, "--municipality", "131016",
        "--name", "試験 次郎", "--address", "千代田区2-2", "--birth-date", "1985-05-05",
        "--sex", "男", "--pubkey", str(pubkey), "--out", str(out),
    ]  # fmt: skip


def test_issue_lose_and_publish_print_what_changed(
    pki: Pki, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    card_key, card_pub = _pem_key(tmp_path, "card")
    code, out, _ = run(
        capsys,
        *registry(
            pki, *_issue_args("44400000001", "card-sign", card_pub, tmp_path / "c.pem"), "--json"
        ),
    )
    assert code == 0
    card_serial = json.loads(out)["issued"]["serial"]
    assert (tmp_path / "c.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    # The smartphone application (第16条の2) with every input made by openssl, as the
    # README's steps make them: the notice signed with the card key, a CSR of the device key.
    card_pem = tmp_path / "card.key"
    card_pem.write_bytes(
        card_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    notice = tmp_path / "notice.txt"
    signed_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    notice.write_text(
        f"kind: MOBILE_SIGN\nname: 試験 次郎\nbirth_date: 1985-05-05\nsex: 男\n"
        f"address: 千代田区2-2\nsigned_at: {signed_at}\n",
        encoding="utf-8",
    )
    sig = tmp_path / "notice.sig"
    openssl("dgst", "-sha256", "-sign", str(card_pem), "-out", str(sig), str(notice))
    begin = ["mobile-apply", "begin", "--kind", "mobile-sign", "--notice", str(notice),
             "--signature", str(sig), "--card-certificate", str(tmp_path / "c.pem")]  # fmt: skip
    code, out, err = run(capsys, *registry(pki, *begin, "--json"))
    assert code == 0, err
    application = json.loads(out)["application"]
    assert application["holder"]["name"] == "試験 次郎"
    # The same notice again: refused, exit 3, one line naming the condition.
    code, out, err = run(capsys, *registry(pki, *begin))
    assert code == 3 and "already began an application" in err and not out
    device_key = tmp_path / "device.key"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(device_key))  # fmt: skip
    csr = tmp_path / "device.csr"
    openssl("req", "-new", "-key", str(device_key), "-subj", "/CN=device", "-out", str(csr))
    code, out, err = run(
        capsys,
        *registry(pki, "mobile-apply", "complete", "--application", application["id"],
                  "--csr", str(csr), "--out", str(tmp_path / "m.pem")),
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("issued MOBILE_SIGN")
    subject = openssl("x509", "-in", str(tmp_path / "m.pem"), "-noout", "-subject",
                      "-nameopt", "utf8").stdout  # fmt: skip
    assert "試験 次郎" in subject
    code, out, _ = run(
        capsys,
        *registry(pki, "lose", "--kind", "card-sign", "--serial", card_serial,
                  "--cause", "holder-request", "--reason", "key-compromise"),
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"CARD_SIGN {card_serial} lost effect: HOLDER_REQUEST")
    assert (
        "MOBILE_SIGN" in lines[1] and f"after CARD_SIGN {card_serial} (HOLDER_REQUEST)" in lines[1]
    )
    code, out, _ = run(capsys, *registry(pki, "publish", "--json"))
    assert code == 0
    assert json.loads(out)["snapshot"]["type"] in ("full", "delta")


def test_resident_event_and_consent_commands(
    pki: Pki, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for kind in ("card-sign", "card-auth"):
        _, pub = _pem_key(tmp_path, kind)  # a key pair of its own for each certificate
        assert (
            run(capsys, *registry(pki, *_issue_args("44400000002", kind, pub, tmp_path / "x")))[0]
            == 0
        )
    register_verifier(pki, "bank-a")  # consent is given to a registered verifier only
    code, out, _ = run(
        capsys, *registry(pki, "consent", "grant", "--resident-code", "44400000002",
                          "--verifier", "bank-a"),
    )  # fmt: skip
    assert code == 0 and "consent for bank-a: in effect" in out
    code, out, _ = run(
        capsys, *registry(pki, "consent", "show", "--resident-code", "44400000002", "--json")
    )
    assert [c["verifier"] for c in json.loads(out)["consents"]] == ["bank-a"]
    code, out, _ = run(
        capsys,
        *registry(pki, "resident-event", "--resident-code", "44400000002",
                  "--event", "move-out", "--planned-date", "2000-01-01", "--json"),
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    # Planned long ago: the 30 days have passed, so the auth certificate ends at once
    # (at its notBefore, being issued after the deadline).
    assert [(c["kind"], c["cause"]) for c in result["changes"]] == [
        ("CARD_AUTH", "RESIDENT_CHANGE")
    ]
    # Day 1 is 2 January, day 30 is 31 January: it ends at 1 February 00:00 JST.
    assert result["move_out_deadline"].startswith("2000-01-31T15:00:00")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["lose", "--kind", "card-sign", "--serial", "1234", "--cause", "holder-request"],
         "never issued"),
        (["resident-event", "--resident-code", "99999999998", "--event", "name-change"],
         "no certificate was ever issued"),
        (["resident-event", "--resident-code", "12", "--event", "name-change"],
         "11 digits"),
        (["issuer-compromise", "--kind", "card-auth", "--generation", "00" * 20],
         "no issuing CA generation"),
        (["consent", "withdraw", "--resident-code", "99999999998", "--verifier", "v"],
         "never issued a signing certificate"),
    ],
)  # fmt: skip
def test_refused_input_exits_3_and_changes_nothing(
    pki: Pki, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    before, published = mark(pki), snapshots(pki)
    code, out, err = run(capsys, *registry(pki, *argv))
    assert code == 3
    assert out == ""
    assert fragment in err and err.count("\n") == 1
    assert (mark(pki), snapshots(pki)) == (before, published)


def test_second_loss_and_a_notice_signed_by_another_key_are_refused(
    pki: Pki, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    card: Issued = pki.issue(CertKind.CARD_SIGN, resident_code="44400000003")
    lose = ["lose", "--kind", "card-sign", "--serial", serial_hex(card.serial),
            "--cause", "record-error"]  # fmt: skip
    assert run(capsys, *registry(pki, *lose))[0] == 0
    before = mark(pki)
    code, _, err = run(capsys, *registry(pki, *lose))
    assert code == 3 and "already lost effect" in err
    other = pki.issue(CertKind.CARD_SIGN, resident_code="44400000004")
    cert = tmp_path / "other.pem"
    cert.write_bytes(other.certificate.public_bytes(serialization.Encoding.PEM))
    notice = tmp_path / "notice.txt"
    notice.write_text(
        "kind: MOBILE_SIGN\nname: 試験 太郎\nbirth_date: 1990-01-01\nsex: 男\n"
        f"address: 千代田区1-1\nsigned_at: {datetime.now(UTC).isoformat()}\n",
        encoding="utf-8",
    )
    sig = tmp_path / "bad.sig"
    sig.write_bytes(b"\x00" * 256)
    before = mark(pki)
    code, out, err = run(
        capsys,
        *registry(pki, "mobile-apply", "begin", "--kind", "mobile-sign", "--notice", str(notice),
                  "--signature", str(sig), "--card-certificate", str(cert)),
    )  # fmt: skip
    assert code == 3 and not out
    assert f"not signed with the key of CARD_SIGN serial {other.serial:X}" in err
    assert mark(pki) == before


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["lose", "--kind", "card-sing", "--serial", "01", "--cause", "holder-request"],
         "unknown certificate kind 'card-sing'"),
        (["lose", "--kind", "card-sign", "--serial", "xyz", "--cause", "holder-request"],
         "not hexadecimal"),
        (["lose", "--kind", "card-sign", "--serial", "01", "--cause", "resident-change"],
         "'resident-change' is not one of"),
        (["resident-event", "--resident-code", "44400000002", "--event", "move-out",
          "--planned-date", "someday"], "YYYY-MM-DD"),
        (["consent", "grant", "--resident-code", "44400000002"], "needs --verifier"),
        (["issue", "--kind", "card-sign", "--resident-code", "1", "--municipality", "1",
          "--name", "n", "--address", "a", "--birth-date", "2000-01-01", "--sex", "s",
          "--pubkey", "/nonexistent.pem", "--out", "/tmp/x"], "/nonexistent.pem"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_and_change_nothing(
    pki: Pki, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    before = mark(pki)
    code, _, err = run(capsys, *registry(pki, *argv))
    assert code == 2
    assert fragment in err
    assert mark(pki) == before


def test_plaintext_needs_loopback_and_an_unreachable_signer_exits_4(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "registry", "publish", "--signer", "127.0.0.1:1")
    assert code == 2 and "--insecure-loopback" in err
    code, _, err = run(
        capsys, "registry", "publish", "--signer", "192.0.2.1:50052", "--insecure-loopback"
    )
    assert code == 2 and "loopback" in err
    port = free_port()  # nobody listens on it
    code, _, err = run(
        capsys,
        "registry", "publish", "--signer", f"127.0.0.1:{port}", "--insecure-loopback",
        "--timeout", "2",
    )  # fmt: skip
    assert code == 4 and "nothing answers on" in err


def test_connection_options_also_go_before_the_subcommand(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jpki-va registry --signer HOST:PORT publish`, as the operators' runbook writes it."""
    signer = f"127.0.0.1:{pki.signer.port}"
    code, out, err = run(
        capsys, "registry", "--signer", signer, "--insecure-loopback", "publish", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["snapshot"]["type"] in ("full", "delta")
    code, _, err = run(capsys, "registry", "--insecure-loopback", "publish")
    assert code == 2
    assert "--signer HOST:PORT is required" in err
