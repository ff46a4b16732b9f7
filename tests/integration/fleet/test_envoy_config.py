"""`jpki-va balancer envoy-config` writes a bootstrap Envoy itself accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from jpki_va.bench.fleet import envoy_binary
from tests.support import JPKI_VA


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
