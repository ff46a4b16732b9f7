"""Every URL a certificate carries answers, over the responder's real HTTP server:
the issuer certificates (AIA caIssuers), the root's ARL (the issuing CAs' CRLDP) and
the delta CRLs (freshestCRL), an empty delta until a loss changes the partition."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from jpki_va.core.domain import CertKind
from jpki_va.protos import crl_pb2, crl_pb2_grpc
from jpki_va.server.pki.cert_profile import key_id
from tests.integration.interop.conftest import Demo, write_pem
from tests.support import Issued, Pki, openssl


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.headers["Content-Type"], reply.read()


def _status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, data=b"x" if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection
            return exc.code


def _ca_issuers(cert: x509.Certificate) -> str:
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    (url,) = [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
    ]
    return str(url)


def _distribution_point(ext: x509.CRLDistributionPoints | x509.FreshestCRL) -> str:
    point = ext[0]
    assert point.full_name is not None
    return str(point.full_name[0].value)


def test_the_issuer_chain_is_fetched_from_the_certificates_alone(
    linked_pki: Pki, demo: Demo
) -> None:
    content_type, der = _get(_ca_issuers(demo.good.certificate))
    assert content_type == "application/pkix-cert"
    issuer = x509.load_der_x509_certificate(der)
    assert issuer == demo.good.issuer
    _, der = _get(_ca_issuers(issuer))
    assert x509.load_der_x509_certificate(der) == linked_pki.root


def test_the_issuing_ca_names_the_roots_arl_and_it_is_served(linked_pki: Pki, demo: Demo) -> None:
    cdp = demo.good.issuer.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = _distribution_point(cdp)
    content_type, der = _get(url)
    assert content_type == "application/pkix-crl"
    arl = x509.load_der_x509_crl(der)
    assert arl.is_signature_valid(linked_pki.root.public_key())  # type: ignore[arg-type]
    assert len(arl) == 0  # no issuer key was compromised
    idp = arl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert idp.only_contains_ca_certs and idp.full_name is not None
    assert idp.full_name[0].value == url  # RFC 5280 §6.3.3: the CRL covers the CA


def _delta_of(issued: Issued) -> x509.CertificateRevocationList:
    freshest = issued.certificate.extensions.get_extension_for_class(x509.FreshestCRL).value
    content_type, der = _get(_distribution_point(freshest))
    assert content_type == "application/pkix-crl"
    delta = x509.load_der_x509_crl(der)
    assert delta.is_signature_valid(issued.issuer.public_key())  # type: ignore[arg-type]
    return delta


def test_the_freshest_crl_url_always_answers_with_a_delta(linked_pki: Pki, demo: Demo) -> None:
    # The delta snapshot changed CARD_SIGN's partition: its delta lists the late loss.
    delta = _delta_of(demo.good)
    assert delta.get_revoked_certificate_by_serial_number(demo.revoked_in_delta.serial)
    # MOBILE_SIGN's partition had no loss since the full: its delta is the empty one
    # issued with the full CRL, under the same number (RFC 5280 §5.2.3).
    empty = _delta_of(demo.cascaded)
    assert len(empty) == 0
    number = empty.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    base = empty.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    assert number == base
    cdp = demo.cascaded.certificate.extensions.get_extension_for_class(
        x509.CRLDistributionPoints
    ).value
    _, der = _get(_distribution_point(cdp))
    full = x509.load_der_x509_crl(der)
    assert full.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == base
    assert full.get_revoked_certificate_by_serial_number(demo.cascaded.serial)


@pytest.mark.parametrize(
    "path",
    [
        "/ca/root/0000000000000000.crt",
        "/ca/card-sign/0000000000000000.crt",
        "/ca/no-such-kind/0000000000000000.crt",
        "/ca/root/00.crt",
        "/arl/0000000000000000.crl",
        "/arl/zz.crl",
        "/crl/card-sign/0000000000000000/131016.delta.crl",
    ],
)
def test_unknown_ca_files_are_404(linked_pki: Pki, demo: Demo, path: str) -> None:
    assert _status(linked_pki.http_url + path) == 404


def test_ca_files_are_fetched_with_get_only(linked_pki: Pki, demo: Demo) -> None:
    assert _status(_ca_issuers(demo.good.certificate), "POST") == 405


def test_every_issuing_generation_is_reachable(linked_pki: Pki, demo: Demo) -> None:
    with linked_pki.live_index() as index:
        generations = [(e.kind, e.certificate) for e in index.issuers.values()]
    assert {kind for kind, _ in generations} == set(CertKind)
    for kind, cert in generations:
        url = f"{linked_pki.http_url}/ca/{kind.slug}/{key_id(cert.public_key()).hex()[:16]}.crt"
        assert x509.load_der_x509_certificate(_get(url)[1]) == cert


def test_openssl_checks_every_certificate_of_the_path_on_the_served_crls(
    linked_pki: Pki, demo: Demo, tmp_path: Path
) -> None:
    """`-crl_check_all`: the issuing CA on the root's ARL, the end entity on its CRL."""
    root = write_pem(tmp_path, "root", linked_pki.root)
    issuer = write_pem(tmp_path, "issuer", demo.good.issuer)
    arl_url = _distribution_point(
        demo.good.issuer.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    )
    crl_url = _distribution_point(
        demo.good.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    )
    crls = []
    for name, url in (("arl", arl_url), ("crl", crl_url)):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(x509.load_der_x509_crl(_get(url)[1]).public_bytes(Encoding.PEM))
        crls += ["-CRLfile", str(path)]

    def verify(issued: Issued) -> tuple[int, str]:
        cert = write_pem(tmp_path, "cert", issued.certificate)
        result = openssl(
            "verify", "-crl_check_all", "-CAfile", str(root), "-untrusted", str(issuer),
            *crls, str(cert), check=False,
        )  # fmt: skip
        return result.returncode, result.stdout + result.stderr

    code, out = verify(demo.good)
    assert code == 0, out
    code, out = verify(demo.revoked)
    assert code != 0 and "certificate revoked" in out


def test_the_arl_through_crl_service_is_the_one_served_over_http(
    linked_pki: Pki, demo: Demo
) -> None:
    channel = grpc.insecure_channel(linked_pki.responder_address)
    try:
        stub = crl_pb2_grpc.CrlServiceStub(channel)
        reply = stub.GetAuthorityRevocationList(
            crl_pb2.GetAuthorityRevocationListRequest(), timeout=10
        )
        root_key_id = key_id(linked_pki.root.public_key())
        named = stub.GetAuthorityRevocationList(
            crl_pb2.GetAuthorityRevocationListRequest(root_key_id=root_key_id), timeout=10
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetAuthorityRevocationList(
                crl_pb2.GetAuthorityRevocationListRequest(root_key_id=b"\x00" * 8), timeout=10
            )
    finally:
        channel.close()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reply.der == named.der
    arl_url = _distribution_point(
        demo.good.issuer.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    )
    assert reply.der == _get(arl_url)[1]
    arl = x509.load_der_x509_crl(reply.der)
    assert reply.number == arl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert reply.next_update.ToDatetime(tzinfo=UTC) == arl.next_update_utc
