"""A signer's port is its own: grpc would share it by default (SO_REUSEPORT), so a
signer started on a port another gRPC server holds refuses to start with one line
and a non-zero exit, and the holder keeps every call. The port is claimed before the
key ceremony, so such a start leaves no new key in the token."""

from __future__ import annotations

import subprocess
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jpki_va.hsm import Hsm, HsmConfig
from tests.support import JPKI_VA


def test_a_signer_on_a_held_port_refuses_to_start(softhsm_token: HsmConfig, tmp_path: Path) -> None:
    assert softhsm_token.pin.file is not None and softhsm_token.softhsm2_conf is not None
    holder = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 1)])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), holder)
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    with Hsm.open(softhsm_token) as token:
        keys_before = token.list_keys()
    try:
        signer = subprocess.run(
            [
                *JPKI_VA, "signer", "--data-dir", str(tmp_path / "signer"), "--bootstrap",
                "--insecure-loopback", "--listen", f"127.0.0.1:{port}",
                "--hsm-module", softhsm_token.module, "--hsm-token", softhsm_token.token_label,
                "--hsm-pin-file", softhsm_token.pin.file,
                "--softhsm2-conf", softhsm_token.softhsm2_conf, "--log-format", "text",
            ],
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert signer.returncode != 0, signer.stderr
        assert "Traceback" not in signer.stderr, signer.stderr[-3000:]
        errors = [line for line in signer.stderr.splitlines() if "error" in line.lower()]
        assert errors and str(port) in errors[-1], signer.stderr
        with Hsm.open(softhsm_token) as token:
            assert token.list_keys() == keys_before  # --bootstrap made no key
        # Every call still reaches the holder, none a twin.
        for _ in range(20):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        holder.stop(None)
