"""Standard gRPC health checking and server reflection on every server."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.app.config import ResponderConfig
from jpki_va.server.app.responder_app import Responder
from tests.support import Pki
from tests.support.buf import run_buf


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)


def _services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
        return {s.name for s in reply.list_services_response.service}


def test_responder_health_and_reflection(pki: Pki) -> None:
    pki.publish_and_wait()
    address = pki.responder_address
    assert _health(address, "") == health_pb2.HealthCheckResponse.SERVING
    assert _health(address, "jpki.va.v1.StatusService") == health_pb2.HealthCheckResponse.SERVING
    assert {"jpki.va.v1.StatusService", "grpc.health.v1.Health"} <= _services(address)


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_reflection_answers_a_third_party_client_on_both_versions(pki: Pki, protocol: str) -> None:
    # buf curl asks only the version it is told to, and builds its request and reads
    # the answer from the descriptors reflection sends: no .proto file is given it.
    pki.publish_and_wait()
    url = f"http://{pki.responder_address}"
    common = ("curl", "--protocol", "grpc", "--http2-prior-knowledge")
    listed = run_buf(*common, "--reflect-protocol", protocol, "--list-services", url, timeout=60)
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "jpki.va.v1.StatusService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    called = run_buf(
        *common,
        "--reflect-protocol",
        protocol,
        "--data",
        "{}",
        f"{url}/jpki.va.v1.StatusService/ListIssuers",
        timeout=60,
    )
    assert called.returncode == 0, called.stderr
    # Field names come from the reflected schema (raw bytes would have none).
    assert json.loads(called.stdout)["rootCertificateDer"], called.stdout


def test_signer_health_and_reflection(pki: Pki) -> None:
    address = f"127.0.0.1:{pki.signer.port}"
    assert _health(address, "jpki.va.v1.SignerService") == health_pb2.HealthCheckResponse.SERVING
    assert "jpki.va.v1.SignerService" in _services(address)


def test_responder_is_not_serving_until_an_index_is_loaded(pki: Pki, tmp_path: Path) -> None:
    empty = tmp_path / "snapshots"
    empty.mkdir()
    responder = Responder(
        ResponderConfig(
            snapshot_dir=empty,
            state_dir=tmp_path / "state",
            trust_anchors=(pki.root_file,),
            listen="127.0.0.1:0",
            workers=1,
            insecure_loopback=True,
        )
    )
    responder.start()
    try:
        address = f"127.0.0.1:{responder.port}"
        assert _health(address, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(address) as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)
            request = va_pb2.CheckRequest(
                cert=va_pb2.CertRef(
                    kind_serial=va_pb2.KindSerial(kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x01")
                )
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        responder.shutdown()
