"""Clear errors, never noise: each mistake an operator or a verifier makes with the
command line gets one line on stderr that says what to change, and its exit code.

Every case runs the real `jpki-va` as a subprocess against real servers (the module's
signer and responders, a TLS responder, the session's SoftHSM2 token) and asserts on
the whole of stderr: one line, so no gRPC C-core log line and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jpki_va.core.cli import EXIT_FAILED, EXIT_SERVER, EXIT_UNREACHABLE, EXIT_USAGE
from jpki_va.hsm import HsmConfig
from jpki_va.server.app.config import TlsFiles
from tests.support import JPKI_VA, ExtraResponder, Pki, free_port, start_responder
from tests.support.tls import TlsCa

#: `jpki-va-client`, the verifier's own script, run from the source tree.
CLIENT = (sys.executable, "-m", "jpki_va.client")


def _jpki_va(*argv: str, command: tuple[str, ...] = JPKI_VA) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, timeout=90, check=False
    )


def _one_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("jpki-va ") and ": error: " in line, line
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture(scope="module")
def tls(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ExtraResponder, TlsCa]]:
    base = tmp_path_factory.mktemp("clear-errors")
    ca = TlsCa(base / "tls")
    server = ca.issue("responder", server=True)
    responder = start_responder(
        pki, base / "state", tls=TlsFiles(server.cert, server.key, ca.cert_file),
        insecure_loopback=False,
    )  # fmt: skip
    try:
        yield responder, ca
    finally:
        responder.close()


CHECK = ("check", "--kind", "card-sign", "--serial", "01", "--timeout", "5s")


def test_plaintext_to_a_tls_port_names_the_fix(tls: tuple[ExtraResponder, TlsCa]) -> None:
    responder, _ = tls
    result = _jpki_va(*CHECK, "--server", responder.address, "--insecure-loopback")
    _one_line(result, EXIT_UNREACHABLE, "speaks TLS", "drop --insecure-loopback", "--ca")


@pytest.mark.parametrize("command", [JPKI_VA, CLIENT], ids=["jpki-va", "jpki-va-client"])
def test_tls_to_a_plaintext_port_names_the_fix(
    pki: Pki, tls: tuple[ExtraResponder, TlsCa], command: tuple[str, ...]
) -> None:
    """Where the C core would log the failed handshake: not on the terminal."""
    _, ca = tls
    result = _jpki_va(
        *CHECK, "--server", pki.responder_address, "--ca", str(ca.cert_file), command=command
    )
    _one_line(result, EXIT_UNREACHABLE, "speaks plaintext gRPC", "add --insecure-loopback")


def test_check_at_the_signer_says_it_is_not_a_responder(pki: Pki) -> None:
    result = _jpki_va(*CHECK, "--server", f"127.0.0.1:{pki.signer.port}", "--insecure-loopback")
    _one_line(result, EXIT_SERVER, "not a responder")


def test_check_at_the_http_port_says_so(pki: Pki) -> None:
    address = f"127.0.0.1:{pki.responder.http_port}"
    result = _jpki_va(*CHECK, "--server", address, "--insecure-loopback")
    _one_line(result, EXIT_UNREACHABLE, "HTTP/1.1, not gRPC", "--listen")


def test_registry_at_the_responder_says_it_is_not_a_signer(pki: Pki) -> None:
    result = _jpki_va(
        "registry", "--signer", pki.responder_address, "--insecure-loopback", "verifier", "list"
    )
    _one_line(result, EXIT_SERVER, "not a signer")


def test_nothing_listening_says_so() -> None:
    result = _jpki_va(*CHECK, "--server", f"127.0.0.1:{free_port()}", "--insecure-loopback")
    _one_line(result, EXIT_UNREACHABLE, "nothing answers")


def _signer(data_dir: Path, token: HsmConfig, *extra: str) -> subprocess.CompletedProcess[str]:
    assert token.pin.file is not None and token.softhsm2_conf is not None
    return _jpki_va(
        "signer", "--data-dir", str(data_dir), "--insecure-loopback",
        "--listen", f"127.0.0.1:{free_port()}", "--hsm-pin-file", token.pin.file,
        "--softhsm2-conf", token.softhsm2_conf, *extra,
    )  # fmt: skip


def _keys_list(token: HsmConfig, *extra: str) -> subprocess.CompletedProcess[str]:
    assert token.pin.file is not None and token.softhsm2_conf is not None
    return _jpki_va(
        "hsm", "keys", "list", "--hsm-pin-file", token.pin.file,
        "--softhsm2-conf", token.softhsm2_conf, *extra,
    )  # fmt: skip


def test_a_missing_pkcs11_module_reads_the_same_from_hsm_and_signer(
    softhsm_token: HsmConfig, tmp_path: Path
) -> None:
    module = ("--hsm-module", str(tmp_path / "missing.so"), "--hsm-token", "x")
    from_hsm = _one_line(_keys_list(softhsm_token, *module), EXIT_USAGE, "missing.so")
    from_signer = _one_line(_signer(tmp_path / "d", softhsm_token, *module), EXIT_USAGE)
    assert from_hsm.split(": error: ")[1] == from_signer.split(": error: ")[1]


def test_an_unknown_token_label_lists_the_labels(softhsm_token: HsmConfig, tmp_path: Path) -> None:
    known = repr(softhsm_token.token_label)
    token = ("--hsm-module", softhsm_token.module, "--hsm-token", "no-such-token")
    _one_line(_keys_list(softhsm_token, *token), EXIT_FAILED, "'no-such-token'", known)
    _one_line(_signer(tmp_path / "d", softhsm_token, *token), EXIT_USAGE, known)


def test_a_fresh_directory_without_bootstrap(softhsm_token: HsmConfig, tmp_path: Path) -> None:
    token = ("--hsm-module", softhsm_token.module, "--hsm-token", softhsm_token.token_label)
    result = _signer(tmp_path / "fresh", softhsm_token, *token)
    _one_line(result, EXIT_USAGE, "no CA hierarchy", "--bootstrap")


def test_a_config_value_of_the_wrong_type(softhsm_token: HsmConfig, tmp_path: Path) -> None:
    config = tmp_path / "signer.toml"
    config.write_text("listen = 50690\n")
    token = ("--hsm-module", softhsm_token.module, "--hsm-token", softhsm_token.token_label)
    result = _signer(tmp_path / "d", softhsm_token, *token, "--config", str(config))
    _one_line(result, EXIT_USAGE, "listen = 50690", "string in quotes")


def test_a_snapshots_directory_that_does_not_exist(pki: Pki, tmp_path: Path) -> None:
    result = _jpki_va(
        "responder", "--snapshots", str(tmp_path / "nowhere"), "--state-dir",
        str(tmp_path / "state"), "--trust-anchor", str(pki.root_file), "--insecure-loopback",
        "--listen", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    _one_line(result, EXIT_USAGE, "--snapshots", "nowhere", "not a directory")
    assert not (tmp_path / "state").exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("content", "with_tls", "fragments"),
    [
        (b"not a certificate", True, ("--trusted-proxy-cert", "not PEM certificates")),
        (None, False, ("--trusted-proxy-cert goes with mTLS",)),
    ],
    ids=["not-pem", "without-tls"],
)
def test_a_trusted_proxy_certificate_that_cannot_be(
    pki: Pki, tmp_path: Path, content: bytes | None, with_tls: bool, fragments: tuple[str, ...]
) -> None:
    proxy = tmp_path / "proxy.pem"
    proxy.write_bytes(content or b"")
    ca = TlsCa(tmp_path / "tls")
    server = ca.issue("responder", server=True)
    tls = (
        ("--tls-cert", str(server.cert), "--tls-key", str(server.key),
         "--client-ca", str(ca.cert_file))
        if with_tls else ("--insecure-loopback",)
    )  # fmt: skip
    result = _jpki_va(
        "responder", "--snapshots", str(pki.signer.config.snapshot_dir), "--state-dir",
        str(tmp_path / "state"), "--trust-anchor", str(pki.root_file), *tls,
        "--listen", f"127.0.0.1:{free_port()}", "--trusted-proxy-cert", str(proxy),
    )  # fmt: skip
    _one_line(result, EXIT_USAGE, *fragments)
    assert not (tmp_path / "state").exists()  # refused before anything was made
