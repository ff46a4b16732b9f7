"""`jpki-va balancer envoy-config` writes a bootstrap Envoy itself accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from jpki_va.bench.fleet import envoy_binary
from tests.support import JPKI_VA
from tests.support.tls import TlsCa


def test_envoy_validates_the_rendered_bootstrap(tmp_path: Path) -> None:
    out = tmp_path / "envoy.json"
    subprocess.run(
        [*JPKI_VA, "balancer", "envoy-config", "--output", str(out),
         "--replica", "127.0.0.1:50061,127.0.0.1:8081",
         "--replica", "127.0.0.1:50062,127.0.0.1:8082",
         "--replica", "127.0.0.1:50063,127.0.0.1:8083"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(out), "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"configuration '{out}' OK" in checked.stdout + checked.stderr


def test_a_bad_replica_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [*JPKI_VA, "balancer", "envoy-config", "--replica", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "jpki-va balancer: error: --replica '127.0.0.1:1': give GRPC_HOST:PORT,HTTP_HOST:PORT"
    ]


def test_envoy_validates_the_tls_bootstrap(tmp_path: Path) -> None:
    """Replicas on hosts of their own: mTLS from verifiers, TLS to the replicas."""
    ca = TlsCa(tmp_path / "tls")
    envoy = ca.issue("envoy", server=True)
    proxy = ca.issue("envoy-proxy")
    out = tmp_path / "envoy.json"
    subprocess.run(
        [*JPKI_VA, "balancer", "envoy-config", "--output", str(out),
         "--replica", "10.0.0.2:50061,10.0.0.2:8081",
         "--tls-cert", str(envoy.cert), "--tls-key", str(envoy.key),
         "--client-ca", str(ca.cert_file), "--replica-ca", str(ca.cert_file),
         "--proxy-cert", str(proxy.cert), "--proxy-key", str(proxy.key)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "SANITIZE_SET" in out.read_text()
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(out), "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_tls_files_go_together(tmp_path: Path) -> None:
    result = subprocess.run(
        [*JPKI_VA, "balancer", "envoy-config", "--replica", "10.0.0.2:1,10.0.0.2:2",
         "--tls-cert", str(tmp_path / "x.pem")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "go together" in result.stderr
