"""`jpki-va demo` as a new user runs it, judged by `jpki-va check` and openssl.

The demo runs as its own process (its own SoftHSM2 token and configuration).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jpki_va.core.domain import CrlReason
from tests.support import JPKI_VA, REPO, free_port, free_port_pair, openssl, wait_for
from tests.support.processes import alive, children_of


def jpki_va(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*JPKI_VA, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def _start_demo(
    directory: Path, port: int, http_port: int | None, *options: str
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    http = [] if http_port is None else ["--http-port", str(http_port)]
    return subprocess.Popen(
        [*JPKI_VA, "demo", "--data-dir", str(directory), "--port", str(port), *http, *options],
        cwd=directory.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str], signum: signal.Signals = signal.SIGINT) -> str:
    """Stop the demo as Ctrl-C (or a service manager's SIGTERM) does: exit 0 within a
    bound, no traceback, none of its processes (the responder's workers) left."""
    children = children_of(proc.pid)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    wait_for(lambda: not any(alive(pid) for pid in children), "no orphan left", 15)
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("demo")
    directory = base / "jpki-va-demo"
    proc = _start_demo(directory, free_port_pair(), free_port(), "--metrics-port", "0")
    try:
        wait_for(
            lambda: (directory / "demo.json").exists() or proc.poll() is not None,
            "demo.json",
            timeout=180,
        )
        assert proc.poll() is None, proc.communicate()[0]
        yield directory, json.loads((directory / "demo.json").read_text())
    finally:
        if proc.poll() is None:
            _stop(proc, signal.SIGTERM)


def test_demo_json_describes_everything(demo: tuple[Path, dict[str, Any]]) -> None:
    directory, info = demo
    assert info["responder"].startswith("127.0.0.1:")
    assert info["signer"].startswith("127.0.0.1:")
    for key in ("module", "softhsm2_conf", "token_label", "pin_file"):
        assert info["hsm"][key]
    assert (directory / info["hsm"]["pin_file"]).stat().st_mode & 0o077 == 0
    kinds = {c["kind"] for c in info["certs"]}
    assert kinds == {"CARD_SIGN", "CARD_AUTH", "MOBILE_SIGN", "MOBILE_AUTH"}
    causes = {c["expected"]["cause"] for c in info["certs"]}
    assert {None, "HOLDER_REQUEST", "RECORD_ERROR", "CARD_CERT_LOST_EFFECT"} <= causes
    for cert in info["certs"]:
        assert (directory / cert["cert"]).exists()
        assert (directory / cert["issuer"]).exists()


def test_demo_exposes_metrics(demo: tuple[Path, dict[str, Any]]) -> None:
    _, info = demo
    for role in ("responder", "signer"):
        with urllib.request.urlopen(info["metrics"][role], timeout=10) as reply:
            assert f'role="{role}"'.encode() in reply.read()


def test_every_demo_certificate_via_check_and_openssl_ocsp(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    directory, info = demo
    root = directory / info["root"]
    for cert in info["certs"]:
        out = tmp_path / f"{cert['name']}.der"
        result = jpki_va(
            "check", "--server", info["responder"], "--insecure-loopback",
            "--cert", str(directory / cert["cert"]), "--json", "--ocsp-out", str(out),
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        expected = cert["expected"]
        assert answer["status"] == expected["status"]
        assert (answer["revocation"] or {}).get("cause") == expected["cause"]
        verified = openssl(
            "ocsp", "-respin", str(out), "-issuer", str(directory / cert["issuer"]),
            "-cert", str(directory / cert["cert"]), "-CAfile", str(root),
        )  # fmt: skip
        assert "Response verify OK" in verified.stderr
        line = f"{directory / cert['cert']}: {expected['status'].lower()}"
        assert line in verified.stdout
        if expected["status"] == "REVOKED":
            reason = CrlReason[expected["reason"]].to_x509().value
            assert f"Reason: {reason}" in verified.stdout


def test_never_issued_serial_is_unknown_over_ocsp(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    directory, info = demo
    out = tmp_path / "unknown.der"
    result = jpki_va(
        "check", "--server", info["responder"], "--insecure-loopback", "--kind", "card-sign",
        "--serial", "0123456789ABCDEF", "--json", "--ocsp-out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "UNKNOWN"
    issuer = next(c["issuer"] for c in info["certs"] if c["kind"] == "CARD_SIGN")
    verified = openssl(
        "ocsp", "-respin", str(out), "-issuer", str(directory / issuer),
        "-serial", "0x0123456789ABCDEF", "-CAfile", str(directory / info["root"]),
    )  # fmt: skip
    assert "Response verify OK" in verified.stderr
    assert ": unknown" in verified.stdout


def test_demo_crls_judge_the_demo_certificates(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    directory, info = demo
    snapshot = sorted((directory / "signer" / "snapshots").glob("snap-*"))[-1]
    for cert in info["certs"]:
        cert_path = directory / cert["cert"]
        issuer = directory / cert["issuer"]
        kid = issuer.stem.removeprefix("issuer-")
        municipality = openssl("x509", "-in", str(cert_path), "-noout", "-ext",
                               "crlDistributionPoints").stdout  # fmt: skip
        partition = municipality.split(".crl")[0].rsplit("/", 1)[1]
        crl_dir = next((snapshot / "crls").glob(f"*/{kid}*"))
        crl_der = crl_dir / f"{partition}.crl"
        verified = openssl("crl", "-inform", "DER", "-in", str(crl_der), "-CAfile", str(issuer),
                           "-noout", "-verify")  # fmt: skip
        assert "verify OK" in verified.stderr
        crl_pem = tmp_path / "crl.pem"
        openssl("crl", "-inform", "DER", "-in", str(crl_der), "-out", str(crl_pem))
        chain = tmp_path / "chain.pem"
        chain.write_bytes((directory / info["root"]).read_bytes() + issuer.read_bytes())
        result = openssl("verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(crl_pem),
                         str(cert_path), check=False)  # fmt: skip
        if cert["expected"]["status"] == "GOOD":
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            assert "certificate revoked" in result.stdout + result.stderr


def test_demo_certificates_point_at_its_http_endpoint(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """openssl finds OCSP and the CRL by the URLs the certificates carry."""
    directory, info = demo
    root = directory / info["root"]
    for cert in info["certs"][:4]:
        cert_path = directory / cert["cert"]
        url = openssl("x509", "-in", str(cert_path), "-noout", "-ocsp_uri").stdout.strip()
        assert url == info["http"] + "/ocsp"
        verified = openssl(
            "ocsp", "-url", url, "-issuer", str(directory / cert["issuer"]),
            "-cert", str(cert_path), "-CAfile", str(root),
        )  # fmt: skip
        assert "Response verify OK" in verified.stderr
        assert f"{cert_path}: {cert['expected']['status'].lower()}" in verified.stdout
        points = openssl("x509", "-in", str(cert_path), "-noout", "-ext", "crlDistributionPoints")
        crl_url = next(
            word.removeprefix("URI:")
            for word in points.stdout.split()
            if word.startswith("URI:http")
        )
        crl = tmp_path / "crl.der"
        subprocess.run(["curl", "-sf", "-o", str(crl), crl_url], check=True, timeout=30)
        result = openssl(
            "crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(directory / cert["issuer"]),
            "-noout", "-verify",
        )  # fmt: skip
        assert "verify OK" in result.stderr


def test_demo_runs_again_on_the_same_directory(tmp_path: Path) -> None:
    """Reused: same certificates, gRPC where asked this time, and the HTTP port its
    certificates and CRLs name (issue 15, item 12: another --http-port was silently
    ignored; it is refused with one line before anything starts)."""
    directory = tmp_path / "again"
    state = directory / "demo.json"
    http_port = free_port()
    proc = _start_demo(directory, free_port_pair(), http_port)
    try:
        _wait_serving(proc, directory)
    finally:
        _stop(proc)
    first = state.read_text()

    other = next(p for p in iter(free_port, None) if p != http_port)
    refused = _start_demo(directory, free_port_pair(), other)
    try:
        _wait_serving(refused, directory, exited=True)
    finally:
        started = refused.poll() is None
        out = _stop(refused) if started else refused.communicate(timeout=60)[0]
    assert not started, f"it served, ignoring --http-port {other}:\n{out}"
    assert refused.returncode == 2, out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert f"--http-port {other}" in lines[0] and f"127.0.0.1:{http_port}" in lines[0]
    assert "--reset" in lines[0]
    assert state.read_text() == first

    proc = _start_demo(directory, free_port_pair(), None)
    try:
        _wait_serving(proc, directory)
        again = json.loads(state.read_text())
        assert [c["serial"] for c in again["certs"]] == [
            c["serial"] for c in json.loads(first)["certs"]
        ]
        assert again["http"] == f"http://127.0.0.1:{http_port}"
        cert = again["certs"][0]
        verified = openssl(
            "ocsp", "-url", again["http"] + "/ocsp", "-issuer", str(directory / cert["issuer"]),
            "-cert", str(directory / cert["cert"]), "-CAfile", str(directory / again["root"]),
        )  # fmt: skip
        assert "Response verify OK" in verified.stderr
    finally:
        out = _stop(proc)
    assert "reusing" in out


def _wait_serving(proc: subprocess.Popen[str], directory: Path, *, exited: bool = False) -> None:
    """Until the demo serves (or exits); `exited`: an exit is what is expected."""
    wait_for(
        lambda: proc.poll() is not None or _serving(directory),
        "the demo to serve or exit",
        timeout=180,
    )
    if not exited:
        assert proc.poll() is None


def _serving(directory: Path) -> bool:
    state = directory / "demo.json"
    if not state.exists():
        return False
    info = json.loads(state.read_text())
    result = jpki_va(
        "check", "--server", info["responder"], "--insecure-loopback",
        "--cert", str(directory / info["certs"][0]["cert"]), cwd=directory,
    )  # fmt: skip
    return result.returncode == 0


def test_demo_map_record_and_watch_commands(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """What the demo's help text offers: taro consented, so his record is given."""
    _, info = demo
    by_name = {c["name"]: c for c in info["certs"]}
    taro, hanako = by_name["taro-card-sign"], by_name["hanako-card-sign"]
    server = ("--server", info["responder"], "--insecure-loopback")
    record = jpki_va("record", *server, "--serial", taro["serial"], "--json", cwd=tmp_path)
    assert record.returncode == 0, record.stderr
    assert json.loads(record.stdout)["name"] == "山田 太郎"
    refused = jpki_va("record", *server, "--serial", hanako["serial"], cwd=tmp_path)
    assert refused.returncode == 3
    assert "FAILED_PRECONDITION" in refused.stderr
    mapped = jpki_va(
        "map", *server, "--kind", "card-sign", "--serial", taro["serial"], "--json", cwd=tmp_path
    )
    assert mapped.returncode == 0, mapped.stderr
    serials = {c["serial"] for c in json.loads(mapped.stdout)["certificates"]}
    assert serials == {by_name["taro-mobile-sign"]["serial"], by_name["taro-card-auth"]["serial"]}
    watched = jpki_va("watch", *server, "--json", "--limit", "1", cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["event"] == "loss"
