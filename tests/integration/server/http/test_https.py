"""HTTP OCSP, CRLs and /metrics over TLS, as a container or pod exposes them.

The responder serves HTTPS with its server certificate and demands a client
certificate from its client CA; the certificate names the verifier exactly as gRPC's
mTLS does (the same fingerprint, the same verifier registry and entitlements), and
an X-JPKI-Verifier header counts for nothing over TLS. /metrics is served over TLS to
a scraper with a client certificate. Real SoftHSM2, LMDB, TLS sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from jpki_va.core.domain import CertKind, Role
from jpki_va.protos import verifiers_pb2
from jpki_va.server.app.config import TlsFiles
from tests.support import JPKI_VA, ExtraResponder, Issued, Pki, start_responder, wait_for
from tests.support.tls import TlsCa, TlsIdentity

ROLES = {"https-auth": Role.AUTH_VERIFIER, "https-sign": Role.SIGNING_VERIFIER}


@dataclass
class World:
    ca: TlsCa
    responder: ExtraResponder
    idents: dict[str, TlsIdentity]
    auth: Issued

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.responder.responder.http_port}"

    def context(self, who: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert_file))
        if who is not None:
            context.load_cert_chain(self.idents[who].cert, self.idents[who].key)
        return context

    def fetch(
        self, who: str | None, url: str, data: bytes | None = None, **headers: str
    ) -> tuple[int, bytes]:
        if data is not None:
            headers["Content-Type"] = "application/ocsp-request"
        request = urllib.request.Request(url, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context(who)) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def ocsp(self, who: str, **headers: str) -> ocsp.OCSPResponse:
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(self.auth.certificate, self.auth.issuer, hashes.SHA1())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        status, body = self.fetch(who, self.base + "/ocsp", der, **headers)
        assert status == 200
        return ocsp.load_der_ocsp_response(body)


@pytest.fixture(scope="module")
def world(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("https")
    ca = TlsCa(base / "tls")
    server = ca.issue("responder", server=True)
    idents = {name: ca.issue(name) for name in [*ROLES, "https-stranger"]}
    for name, role in ROLES.items():
        pki.signer_stub.AddVerifier(
            verifiers_pb2.AddVerifierRequest(
                id=name,
                roles=[int(role)],  # type: ignore[list-item]
                client_certificate_der=[idents[name].der],
            ),
            timeout=30,
        )
    auth = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    responder = start_responder(
        pki,
        base / "state",
        tls=TlsFiles(server.cert, server.key, ca.cert_file),
        insecure_loopback=False,
        http_listen="127.0.0.1:0",
        http_tls=True,
        metrics_listen="127.0.0.1:0",
        metrics_tls=True,
    )
    world = World(ca, responder, idents, auth)
    try:

        def answered() -> bool:
            try:
                return (
                    world.ocsp("https-auth").response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
                )
            except OSError:
                return False

        wait_for(answered, "the HTTPS responder to answer")
        yield world
    finally:
        responder.close()


def test_ocsp_over_https_names_the_verifier_by_its_certificate(world: World) -> None:
    answer = world.ocsp("https-auth")
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    # A signing verifier may not have the status of an auth certificate (DESIGN §7).
    assert world.ocsp("https-sign").response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
    # A certificate from the client CA that no verifier registered is nobody.
    assert world.ocsp("https-stranger").response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_the_verifier_header_counts_for_nothing_over_tls(world: World) -> None:
    refused = world.ocsp("https-sign", **{"X-JPKI-Verifier": "https-auth"})
    assert refused.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_no_client_certificate_no_connection(world: World) -> None:
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        world.fetch(None, world.base + "/ocsp", b"\x30\x00")


def test_crls_over_https_by_entitlement(world: World) -> None:
    points = world.auth.certificate.extensions.get_extension_for_class(
        x509.CRLDistributionPoints
    ).value
    uri = points[0].full_name[0].value
    url = world.base + urlsplit(uri).path
    status, body = world.fetch("https-auth", url)
    assert status == 200
    assert x509.load_der_x509_crl(body).issuer == world.auth.issuer.subject
    assert world.fetch("https-sign", url)[0] == 403


def test_metrics_over_tls_for_a_scraper_with_a_certificate(world: World) -> None:
    url = f"https://127.0.0.1:{world.responder.responder.metrics_port}/metrics"
    status, body = world.fetch("https-stranger", url)
    assert status == 200
    assert b'jpki_va_build_info{python="' in body
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        world.fetch(None, url)


def _probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JPKI_VA, "health", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_health_probe_over_mtls_from_its_environment(world: World) -> None:
    """What a container HEALTHCHECK or a Kubernetes exec probe runs: settings from env."""
    probe = world.idents["https-stranger"]  # any client certificate of the client CA
    env = {
        **os.environ,
        "JPKI_VA_HEALTH_SERVER": world.responder.address,
        "JPKI_VA_HEALTH_CA": str(world.ca.cert_file),
        "JPKI_VA_HEALTH_CLIENT_CERT": str(probe.cert),
        "JPKI_VA_HEALTH_CLIENT_KEY": str(probe.key),
        "JPKI_VA_HEALTH_TLS_SERVER_NAME": "localhost",
    }
    served = _probe(env)
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip().endswith("(server): SERVING")
    unknown = _probe(env, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr and unknown.stderr.count("\n") == 1
    # A client certificate without its key: one line, exit 2, nothing sent.
    del env["JPKI_VA_HEALTH_CLIENT_KEY"]
    incomplete = _probe(env)
    assert incomplete.returncode == 2
    assert "--client-cert and --client-key are required" in incomplete.stderr
