"""`jpki-va check` (jpki_va.client._cli) against a real gRPC server running a fake StatusService."""

from __future__ import annotations

import argparse
import json

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from jpki_va.client import CertKind, add_commands
from jpki_va.protos import va_pb2


def run(*argv: str) -> int:
    # The same wiring as jpki_va.server.cmd.main: add_commands on a subparsers action, then func.
    parser = argparse.ArgumentParser(prog="jpki-va")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check", *argv])
    code: int = args.func(args)
    return code


@pytest.fixture
def cert_files(tmp_path, pki):
    paths = {
        "leaf.pem": pki.leaf.public_bytes(serialization.Encoding.PEM),
        "leaf.der": pki.leaf.public_bytes(serialization.Encoding.DER),
        "gen2.pem": pki.gen2.cert.public_bytes(serialization.Encoding.PEM),
        "junk.pem": b"this is not a certificate\n",
    }
    for name, data in paths.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jpki-va check: error: ")
    return lines[0]


def test_text_output(served, capsys, pki):
    code = run("--server", served.target, "--insecure-loopback", "--kind", "card-sign",
               "--serial", "1a2b3c")  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    lines = dict(line.split(":", 1) for line in out.splitlines())
    fields = {key: value.strip() for key, value in lines.items()}
    assert fields["status"] == "REVOKED"
    assert fields["kind"] == "CARD_SIGN"
    assert fields["serial"] == "1A2B3C"
    assert fields["loss cause"] == "HOLDER_REQUEST"
    assert fields["RFC 5280 reason"] == "KEY_COMPROMISE"
    assert fields["revoked at"] == "2026-11-25T12:00:00+00:00"
    assert fields["not before"] == "2026-10-27T12:00:00+00:00"
    assert fields["not after"] == "2027-11-26T12:00:00+00:00"
    assert fields["partition"] == "131016"
    assert fields["issuer key id"] == pki.gen2.key_id.hex().upper()
    assert fields["index sequence"] == "42"
    request = served.service.requests("Check")[0]
    assert request.cert.kind_serial.kind == CertKind.CARD_SIGN
    assert request.cert.kind_serial.serial == bytes.fromhex("1a2b3c")


def test_text_output_good_status_has_no_revocation(served, capsys):
    served.service.check_answer = va_pb2.CertificateStatus(
        kind=va_pb2.CERT_KIND_CARD_AUTH, serial=b"\x07", status=va_pb2.CERT_STATUS_GOOD
    )
    assert run("--server", served.target, "--insecure-loopback", "--kind", "card-auth",
               "--serial", "07") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "status:          GOOD" in out
    assert "loss cause:      -" in out


def test_json_output(served, capsys, pki):
    code = run("--server", served.target, "--insecure-loopback", "--kind", "card-sign",
               "--serial", "0x1A2B3C", "--json",
               "--as-of", "2026-04-01T09:00:00+09:00")  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    data = json.loads(out)
    assert data["status"] == "REVOKED"
    assert data["serial"] == "1A2B3C"
    assert data["revocation"] == {
        "time": "2026-11-25T12:00:00Z",
        "cause": "HOLDER_REQUEST",
        "reason": "KEY_COMPROMISE",
    }
    assert data["issuer_key_id"] == pki.gen2.key_id.hex().upper()
    assert data["index_sequence"] == 42
    as_of = served.service.requests("Check")[0].as_of
    assert as_of.ToJsonString() == "2026-04-01T00:00:00Z"


@pytest.mark.parametrize("name", ["leaf.pem", "leaf.der"])
def test_cert_file_pem_or_der(served, capsys, cert_files, pki, name):
    code = run("--server", served.target, "--insecure-loopback", "--cert",
               str(cert_files / name))  # fmt: skip
    assert code == 0
    request = served.service.requests("Check")[0]
    assert request.cert.certificate_der == pki.leaf.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kind", "card-sign", "--serial", "xyz"], "not hexadecimal"),
        (["--kind", "card-sign", "--serial", "00"], "positive"),
        (["--kind", "card-sign"], "--serial"),
        (["--cert", "{dir}/missing.pem"], "missing.pem"),
        (["--cert", "{dir}/junk.pem"], "not a PEM or DER certificate"),
        (["--cert", "{dir}/leaf.pem", "--serial", "01"], "--serial goes with --kind"),
        (["--kind", "card-sign", "--serial", "01", "--issuer", "{dir}/gen2.pem"], "--issuer"),
        (["--kind", "card-sign", "--serial", "01", "--as-of", "yesterday"], "ISO 8601"),
        (["--kind", "card-sign", "--serial", "01", "--as-of", "2026-04-01T00:00"], "UTC offset"),
        (["--kind", "card-sign", "--serial", "01", "--timeout", "0"], "--timeout"),
    ],
)
def test_usage_errors_exit_2(served, capsys, cert_files, argv, message):
    argv = [a.replace("{dir}", str(cert_files)) for a in argv]
    code = run("--server", served.target, "--insecure-loopback", *argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert message in one_line_error(err)
    assert served.service.calls == []


def test_unknown_kind_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as caught:
        run("--server", "127.0.0.1:1", "--kind", "card-magic", "--serial", "01")
    assert caught.value.code == 2


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT]
)
def test_server_error_exit_3(served, capsys, code):
    served.service.abort = (code, "verifier lacks AUTH_VERIFIER")
    exit_code = run("--server", served.target, "--insecure-loopback", "--kind", "card-auth",
                    "--serial", "01")  # fmt: skip
    out, err = capsys.readouterr()
    assert exit_code == 3
    assert out == ""
    line = one_line_error(err)
    assert code.name in line
    assert "verifier lacks AUTH_VERIFIER" in line


def test_unreachable_exit_4(capsys, unused_port):
    code = run("--server", f"127.0.0.1:{unused_port}", "--insecure-loopback", "--kind",
               "card-sign", "--serial", "01", "--timeout", "2")  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 4
    assert "nothing answers on" in one_line_error(err)


def test_deadline_exit_4(served, capsys):
    served.service.delay = 5.0
    code = run("--server", served.target, "--insecure-loopback", "--kind", "card-sign",
               "--serial", "01", "--timeout", "0.2")  # fmt: skip
    assert code == 4
    assert "DEADLINE_EXCEEDED" in one_line_error(capsys.readouterr().err)


def test_ocsp_out_by_kind_and_serial(served, capsys, tmp_path, pki):
    target = tmp_path / "resp.der"
    code = run("--server", served.target, "--insecure-loopback", "--kind", "card-sign",
               "--serial", "1A2B3C", "--ocsp-out", str(target))  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert target.read_bytes() == served.service.ocsp_answer
    assert str(target) in err
    assert "SUCCESSFUL" in err
    assert "status:" in out  # the status answer still goes to stdout
    sent = ocsp.load_der_ocsp_request(served.service.requests("Ocsp")[0].der)
    assert sent.serial_number == 0x1A2B3C


def test_ocsp_out_with_cert_and_issuer(served, capsys, tmp_path, cert_files):
    target = tmp_path / "resp.der"
    code = run("--server", served.target, "--insecure-loopback", "--cert",
               str(cert_files / "leaf.der"), "--issuer", str(cert_files / "gen2.pem"),
               "--ocsp-out", str(target), "--json")  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["status"] == "REVOKED"  # stdout stays one JSON object
    assert target.read_bytes() == served.service.ocsp_answer
    assert served.service.requests("ListIssuers") == []  # --issuer given: no lookup


def test_ocsp_out_unknown_issuer_exit_2(served, capsys, tmp_path, cert_files):
    served.service.issuers_answer = va_pb2.ListIssuersResponse()
    target = tmp_path / "resp.der"
    code = run("--server", served.target, "--insecure-loopback", "--cert",
               str(cert_files / "leaf.pem"), "--ocsp-out", str(target))  # fmt: skip
    assert code == 2
    assert "authority key identifier" in one_line_error(capsys.readouterr().err)
    assert not target.exists()


@pytest.mark.parametrize("server", ["192.0.2.10:50051", "va.example.jp:443", "[2001:db8::1]:1"])
def test_plaintext_refused_to_non_loopback(capsys, server):
    code = run("--server", server, "--insecure-loopback", "--kind", "card-sign", "--serial", "01")
    assert code == 2
    assert "only connects to 127.0.0.1" in one_line_error(capsys.readouterr().err)


def test_tls_is_the_default(served, capsys):
    # Without --insecure-loopback the CLI speaks TLS, which the plaintext server refuses.
    code = run("--server", served.target, "--kind", "card-sign", "--serial", "01",
               "--timeout", "2")  # fmt: skip
    assert code == 4
    assert served.service.calls == []


def test_mtls(served_mtls, capsys, tmp_path, pki):
    files = {
        "ca.pem": pki.root.cert.public_bytes(serialization.Encoding.PEM),
        "client.pem": pki.client_cert.public_bytes(serialization.Encoding.PEM),
        "client.key": pki.client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    code = run("--server", served_mtls.target, "--ca", str(tmp_path / "ca.pem"),
               "--client-cert", str(tmp_path / "client.pem"),
               "--client-key", str(tmp_path / "client.key"),
               "--kind", "card-sign", "--serial", "01")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert len(served_mtls.service.requests("Check")) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--client-cert", "c.pem"],
        ["--insecure-loopback", "--ca", "ca.pem"],
    ],
)
def test_tls_option_conflicts_exit_2(capsys, argv):
    code = run("--server", "localhost:1", "--kind", "card-sign", "--serial", "01", *argv)
    assert code == 2
    one_line_error(capsys.readouterr().err)
