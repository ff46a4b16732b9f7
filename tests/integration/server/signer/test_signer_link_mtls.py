"""A responder in a pod of its own gets its delegated OCSP-signer certificates from the
signer over mTLS, presenting an operator's client certificate (real TLS on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2
from jpki_va.server.app.config import SignerConfig, TlsFiles
from jpki_va.server.app.signer_app import start_signer
from jpki_va.server.responder.ocsp_keys import OcspKeyStore
from tests.support import Pki, fresh_key, spki_of, start_responder_over, wait_for
from tests.support.tls import TlsCa


def test_responder_renews_its_ocsp_signer_over_mtls(pki: Pki, tmp_path: Path) -> None:
    ca = TlsCa(tmp_path / "tls")
    server, operator, stranger = ca.issue("signer", server=True), ca.issue("op"), ca.issue("x")
    app = start_signer(
        SignerConfig(
            data_dir=tmp_path / "signer",
            hsm=pki.signer.config.hsm,
            listen="127.0.0.1:0",
            tls=TlsFiles(server.cert, server.key, ca.cert_file),
            operator_certs=(operator.cert,),
            delta_interval=0,
            bootstrap=True,
        )
    )
    responders = []
    try:
        with grpc.secure_channel(
            f"127.0.0.1:{app.port}", ca.channel_credentials(operator)
        ) as channel:
            stub = signer_pb2_grpc.SignerServiceStub(channel)
            root = stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30).root_certificate_der
            # An issuer serves a certificate, so the responder needs a delegated one for it.
            stub.IssueCertificate(
                signer_pb2.IssueCertificateRequest(
                    kind=va_pb2.CERT_KIND_CARD_AUTH,
                    resident_code="60000000001",
                    municipality_code="131016",
                    holder=signer_pb2.HolderInfo(
                        name="試験 花子", address="千代田区1-1", birth_date="1990-01-01", sex="女"
                    ),
                    public_key_der=spki_of(fresh_key()),
                ),
                timeout=30,
            )
            stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
        root_file = tmp_path / "root.der"
        root_file.write_bytes(root)
        for who, identity in (("operator", operator), ("stranger", stranger)):
            responders.append(
                start_responder_over(
                    app.config.snapshot_dir,
                    root_file,
                    tmp_path / who,
                    insecure_loopback=True,
                    signer=f"localhost:{app.port}",  # the name in the signer's certificate
                    signer_ca=ca.cert_file,
                    signer_client_cert=identity.cert,
                    signer_client_key=identity.key,
                )
            )
        certified = wait_for(
            lambda: OcspKeyStore(tmp_path / "operator" / "ocsp").certificates(),
            "delegated OCSP-signer certificates over mTLS",
        )
        for cert in certified:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert ExtendedKeyUsageOID.OCSP_SIGNING in usage
        # A client certificate that is not an operator's gets nothing (tried at start).
        assert OcspKeyStore(tmp_path / "stranger" / "ocsp").certificates() == []
    finally:
        for responder in responders:
            responder.close()
        app.stop()
