"""HTTP OCSP and CRLs, judged by clients no one here wrote: openssl and curl.

Also the signed-response cache as a client sees it, the limits on bad input, and
the Prometheus endpoint scraped with a real HTTP GET.
"""

from __future__ import annotations

import base64
import random
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, SignatureAlgorithmOID

from jpki_va.core.domain import CertKind, Provision, Role
from jpki_va.protos import signer_pb2, va_pb2, verifiers_pb2
from jpki_va.server.ledger.provisions import read_ledgers
from jpki_va.server.pki import ocsp_wire
from tests.support import (
    Issued,
    Pki,
    openssl,
    record_loss,
    request_der,
    throwaway_certificate,
    wait_for,
)


@pytest.fixture(scope="module")
def world(pki: Pki) -> dict[str, Issued]:
    certs = {
        "good": pki.issue(CertKind.CARD_AUTH),
        "revoked": pki.issue(CertKind.CARD_AUTH),
        "sign": pki.issue(CertKind.CARD_SIGN),
    }
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_AUTH,
            serial=certs["revoked"].serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            reason=va_pb2.CRL_REASON_KEY_COMPROMISE,
        ),
        timeout=30,
    )
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=AUTH_ONLY,
            roles=[int(Role.AUTH_VERIFIER)],  # type: ignore[list-item]
            client_certificate_der=[
                throwaway_certificate(AUTH_ONLY).public_bytes(serialization.Encoding.DER)
            ],
        ),
        timeout=30,
    )
    pki.publish_and_wait()
    return certs


AUTH_ONLY = "http-auth-only"

#: The DER AlgorithmIdentifier of each signature algorithm a delegated key may use.
_ALGORITHMS = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: bytes.fromhex("300a06082a8648ce3d040302"),
    SignatureAlgorithmOID.RSA_WITH_SHA256: bytes.fromhex("300d06092a864886f70d01010b0500"),
}


def post(
    pki: Pki, der: bytes, path: str = "/ocsp", verifier: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/ocsp-request"}
    if verifier is not None:
        headers["X-JPKI-Verifier"] = verifier
    request = urllib.request.Request(pki.http_url + path, data=der, headers=headers, method="POST")
    return fetch(request)


def fetch(
    request: urllib.request.Request | str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    if isinstance(request, str):
        request = urllib.request.Request(request, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def curl(*args: str) -> str:
    """curl -sv's report of the exchange (request and response headers)."""
    done = subprocess.run(
        ["curl", "-sv", "-o", "/dev/null", *args], capture_output=True, text=True, check=True
    )
    return done.stderr


def get_url(pki: Pki, der: bytes) -> str:
    return f"{pki.http_url}/ocsp/{urllib.parse.quote(base64.b64encode(der).decode(), safe='')}"


def metric(pki: Pki, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    _, _, body = fetch(pki.metrics_url)
    total = 0.0
    for line in body.decode().splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def pem_files(tmp_path: Path, world: dict[str, Issued], *names: str) -> tuple[list[Path], Path]:
    files = [world[n].pem_files(tmp_path, n)[0] for n in names]
    issuer = world[names[0]].pem_files(tmp_path, names[0])[1]
    return files, issuer


@pytest.mark.parametrize("nonce", [True, False])
def test_openssl_ocsp_over_http(
    pki: Pki, world: dict[str, Issued], tmp_path: Path, nonce: bool
) -> None:
    (good, revoked), issuer = pem_files(tmp_path, world, "good", "revoked")
    result = openssl(
        "ocsp", "-url", pki.http_url, "-issuer", str(issuer),
        "-cert", str(good), "-cert", str(revoked), "-CAfile", str(pki.root_file),
        *([] if nonce else ["-no_nonce"]),
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert "Response verify OK" in out
    assert f"{good}: good" in out
    assert f"{revoked}: revoked" in out
    assert "Reason: keyCompromise" in out
    assert "WARNING" not in out  # e.g. "no nonce in response"


def test_openssl_ocsp_at_the_aia_url(pki: Pki, world: dict[str, Issued], tmp_path: Path) -> None:
    """The path issued certificates carry (.../ocsp) answers too."""
    aia = (
        world["sign"]
        .certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
        .value
    )
    urls = [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
    ]
    assert urls and urls[0].endswith("/ocsp")
    (cert,), issuer = pem_files(tmp_path, world, "sign")
    result = openssl(
        "ocsp", "-url", pki.http_url + "/ocsp", "-issuer", str(issuer), "-cert", str(cert),
        "-CAfile", str(pki.root_file),
    )  # fmt: skip
    assert "Response verify OK" in result.stdout + result.stderr
    assert f"{cert}: good" in result.stdout


def openssl_request(tmp_path: Path, *pairs: tuple[Path, Path], nonce: bool = True) -> bytes:
    """An OCSP request as openssl builds it: (issuer, certificate) pairs, in order."""
    req = tmp_path / "req.der"
    args = [a for issuer, cert in pairs for a in ("-issuer", str(issuer), "-cert", str(cert))]
    openssl("ocsp", *args, *([] if nonce else ["-no_nonce"]), "-reqout", str(req))
    return req.read_bytes()


def test_several_cert_ids_over_grpc_with_nonce(
    pki: Pki, world: dict[str, Issued], tmp_path: Path
) -> None:
    (good, revoked), issuer = pem_files(tmp_path, world, "good", "revoked")
    request = openssl_request(tmp_path, (issuer, good), (issuer, revoked))
    der = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=request), timeout=10).der
    resp = tmp_path / "resp.der"
    resp.write_bytes(der)
    # With -reqin, openssl would add a nonce of its own: compare the echo below instead.
    result = openssl(
        "ocsp", "-respin", str(resp), "-issuer", str(issuer), "-no_nonce",
        "-cert", str(good), "-cert", str(revoked), "-CAfile", str(pki.root_file),
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert "Response verify OK" in out
    assert f"{good}: good" in out and f"{revoked}: revoked" in out
    parsed = ocsp.load_der_ocsp_response(der)
    assert [r.serial_number for r in parsed.responses] == [
        world["good"].serial,
        world["revoked"].serial,
    ]
    text = openssl("ocsp", "-reqin", str(tmp_path / "req.der"), "-req_text").stdout
    asked = re.search(r"OCSP Nonce:\s*\n\s*04([0-9A-F]+)", text)
    assert asked is not None
    echoed = parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert echoed.hex().upper() == asked.group(1)[2:]  # after the inner OCTET STRING's length


def test_cert_ids_of_different_issuers_are_unauthorized(
    pki: Pki, world: dict[str, Issued], tmp_path: Path
) -> None:
    # One response has one signer, whose delegation comes from one issuer.
    (good, sign), _ = pem_files(tmp_path, world, "good", "sign")
    pairs = [(tmp_path / f"{n}-issuer.pem", c) for n, c in (("good", good), ("sign", sign))]
    status, _, body = post(pki, openssl_request(tmp_path, *pairs))
    assert status == 200
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_get_has_rfc5019_cache_headers_and_304(pki: Pki, world: dict[str, Issued]) -> None:
    url = get_url(pki, request_der(world["good"]))
    headers = curl(url)
    assert "< HTTP/1.1 200 OK" in headers
    assert "< Content-Type: application/ocsp-response" in headers
    assert re.search(
        r"< Cache-Control: max-age=\d+, public, no-transform, must-revalidate", headers
    )
    for name in ("ETag", "Last-Modified", "Expires", "Date"):
        assert f"< {name}: " in headers
    etag = re.search(r'< ETag: ("[0-9a-f]+")', headers)
    assert etag is not None
    # The ETag names the signed bytes by their signature's tail: a new signature (new
    # statuses, times or signer) is a new ETag.
    status, _, body = fetch(url)
    assert status == 200
    assert etag.group(1) == f'"{ocsp.load_der_ocsp_response(body).signature[-16:].hex()}"'
    again = curl("-H", f"If-None-Match: {etag.group(1)}", url)
    assert "< HTTP/1.1 304 Not Modified" in again
    assert f"< ETag: {etag.group(1)}" in again
    assert "< HTTP/1.1 200 OK" in curl("-H", 'If-None-Match: "something-else"', url)


def test_get_answer_verifies_with_openssl(
    pki: Pki, world: dict[str, Issued], tmp_path: Path
) -> None:
    status, headers, body = fetch(get_url(pki, request_der(world["revoked"])))
    assert status == 200
    assert headers["Content-Type"] == "application/ocsp-response"
    (tmp_path / "r.der").write_bytes(body)
    (cert,), issuer = pem_files(tmp_path, world, "revoked")
    result = openssl(
        "ocsp", "-respin", str(tmp_path / "r.der"), "-issuer", str(issuer), "-cert", str(cert),
        "-CAfile", str(pki.root_file),
    )  # fmt: skip
    assert "Response verify OK" in result.stderr
    assert f"{cert}: revoked" in result.stdout


def test_nonce_answers_are_not_cacheable(pki: Pki, world: dict[str, Issued]) -> None:
    status, headers, body = post(pki, request_der(world["good"], nonce=b"n" * 16))
    assert status == 200
    assert headers["Cache-Control"] == "no-cache"
    assert "ETag" not in headers
    response = ocsp.load_der_ocsp_response(body)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16


def test_cache_serves_the_same_bytes_while_the_status_holds(
    pki: Pki, world: dict[str, Issued]
) -> None:
    der = request_der(world["sign"])
    hits = metric(pki, "jpki_va_ocsp_cache_total", result="hit")
    nonces = metric(pki, "jpki_va_ocsp_cache_total", result="nonce")
    _, _, first = post(pki, der)
    _, _, second = post(pki, der)
    via_grpc = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=der), timeout=10).der
    assert first == second == via_grpc  # ECDSA signatures differ per signing: not re-signed
    # Kept without its delegated certificate, a cached answer still leaves whole: the
    # bytes of the response encoded in one piece, certificate and all.
    parsed = ocsp.load_der_ocsp_response(first)
    assert len(parsed.certificates) == 1
    whole = ocsp_wire.successful(
        parsed.tbs_response_bytes,
        _ALGORITHMS[parsed.signature_algorithm_oid],
        parsed.signature,
        [parsed.certificates[0].public_bytes(serialization.Encoding.DER)],
    )
    assert first == whole
    # Workers publish their counts every 0.2 s.
    wait_for(lambda: metric(pki, "jpki_va_ocsp_cache_total", result="hit") >= hits + 2, "hits")
    # What the workers keep is in the metrics: at least this response, charged more
    # than its bytes.
    wait_for(lambda: metric(pki, "jpki_va_ocsp_cache_bytes") > len(first), "cache bytes")
    assert metric(pki, "jpki_va_ocsp_cache_entries") >= 1
    with_nonce = [post(pki, request_der(world["sign"], nonce=bytes([i]) * 8))[2] for i in (1, 2)]
    assert with_nonce[0] != with_nonce[1]
    wait_for(
        lambda: metric(pki, "jpki_va_ocsp_cache_total", result="nonce") >= nonces + 2, "nonces"
    )
    misses = metric(pki, "jpki_va_ocsp_cache_total", result="miss")
    asked = metric(pki, "jpki_va_ocsp_preproduced_total")  # served, stale or missing
    pki.publish_and_wait()
    # A new full index drops the workers' caches; the status held, so the answer may be
    # the replica's pre-produced one (responder/preproduced.py) or a new signature.
    _, _, after = post(pki, der)
    old, new = ocsp.load_der_ocsp_response(first), ocsp.load_der_ocsp_response(after)
    assert new.produced_at_utc >= old.produced_at_utc
    assert new.certificate_status is old.certificate_status is ocsp.OCSPCertStatus.GOOD
    # That miss is counted, and so is what the pre-produced store held for it.
    wait_for(
        lambda: (
            metric(pki, "jpki_va_ocsp_cache_total", result="miss") >= misses + 1
            and metric(pki, "jpki_va_ocsp_preproduced_total") >= asked + 1
        ),
        "the miss and the store's answer counted",
    )


def test_crl_over_http(pki: Pki, world: dict[str, Issued], tmp_path: Path) -> None:
    cert = world["revoked"].certificate
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    uris = [
        n.value
        for p in points
        for n in (p.full_name or [])
        if isinstance(n, x509.UniformResourceIdentifier)
    ]
    assert len(uris) == 1
    path = urllib.parse.urlsplit(uris[0]).path
    status, headers, body = fetch(pki.http_url + path)
    assert status == 200
    assert headers["Content-Type"] == "application/pkix-crl"
    assert "must-revalidate" in headers["Cache-Control"]
    crl = x509.load_der_x509_crl(body)
    assert crl.get_revoked_certificate_by_serial_number(world["revoked"].serial) is not None
    # openssl checks the certificate against the CRL fetched over HTTP.
    (tmp_path / "crl.der").write_bytes(body)
    openssl(
        "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-out", str(tmp_path / "crl.pem")
    )
    cert_file, issuer = world["revoked"].pem_files(tmp_path, "revoked")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pki.root_file.read_bytes() + issuer.read_bytes())
    result = openssl(
        "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(tmp_path / "crl.pem"),
        str(cert_file), check=False,
    )  # fmt: skip
    assert "certificate revoked" in result.stdout + result.stderr
    status, _, _ = fetch(pki.http_url + path, {"If-None-Match": headers["ETag"]})
    assert status == 304
    assert fetch(pki.http_url + "/crl/card-auth/0000000000000000/131016.crl")[0] == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("PUT", "/ocsp", b"x", {}, 405),
        ("POST", "/crl/card-sign/x/1.crl", b"x", {}, 405),
        ("GET", "/favicon.ico", None, {}, 400),
        ("POST", "/elsewhere", b"x", {"Content-Type": "application/ocsp-request"}, 404),
        ("POST", "/ocsp", b"x", {"Content-Type": "text/plain"}, 415),
        ("POST", "/ocsp", b"\x30" * 20_000, {"Content-Type": "application/ocsp-request"}, 413),
        ("GET", "/ocsp/" + "A" * 70_000, None, {}, 414),
    ],
)
def test_bad_http_requests_get_clear_statuses(
    pki: Pki,
    world: dict[str, Issued],
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
) -> None:
    request = urllib.request.Request(pki.http_url + path, data=body, headers=headers, method=method)
    got, _, text = fetch(request)
    assert got == status
    assert text  # a message, never a trace
    assert b"Traceback" not in text
    assert post(pki, request_der(world["good"]))[0] == 200


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x00",
        b"garbage",
        b"\x30\x80\x00\x00",  # indefinite length: BER, not DER
        b"\x30\x04\x30\x02\x30\x00",  # an empty requestList
    ],
)
def test_malformed_ocsp_over_http_is_malformed_request(
    pki: Pki, world: dict[str, Issued], der: bytes
) -> None:
    for status, _, body in (post(pki, der), fetch(get_url(pki, der))):
        assert status == 200
        response = ocsp.load_der_ocsp_response(body)
        assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_too_many_cert_ids_is_malformed(pki: Pki, world: dict[str, Issued], tmp_path: Path) -> None:
    limit = pki.responder.config.max_ocsp_cert_ids
    (good,), issuer = pem_files(tmp_path, world, "good")
    ok = openssl_request(tmp_path, *[(issuer, good)] * limit, nonce=False)
    over = openssl_request(tmp_path, *[(issuer, good)] * (limit + 1), nonce=False)
    assert ocsp.load_der_ocsp_response(post(pki, ok)[2]).response_status is (
        ocsp.OCSPResponseStatus.SUCCESSFUL
    )
    assert ocsp.load_der_ocsp_response(post(pki, over)[2]).response_status is (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


def test_worker_survives_random_bytes(pki: Pki, world: dict[str, Issued]) -> None:
    rng = random.Random(20240601)  # fixed: a failure is reproducible
    valid = request_der(world["good"], nonce=b"0123456789abcdef")
    for _ in range(150):
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        else:  # a valid request with a few octets changed: reaches deep into the parser
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            data = bytes(mutated)
        reply = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=data), timeout=10)
        assert ocsp.load_der_ocsp_response(reply.der) is not None
        assert post(pki, data)[0] == 200
    # Raw garbage on the HTTP socket: a 400 and a closed connection, nothing else.
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", pki.responder.http_port), timeout=5) as s:
            s.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(65536)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    status, _, body = post(pki, request_der(world["good"]))
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).certificate_status is ocsp.OCSPCertStatus.GOOD


def test_metrics_endpoint(pki: Pki, world: dict[str, Issued]) -> None:
    post(pki, request_der(world["good"]))
    pki.status_stub.Check(
        va_pb2.CheckRequest(
            cert=va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(
                    kind=va_pb2.CERT_KIND_CARD_AUTH,
                    serial=world["revoked"].serial.to_bytes(8, "big"),
                )
            )
        ),
        timeout=10,
    )
    counted = (
        ("jpki_va_requests_total", {"protocol": "http", "method": "ocsp_post", "outcome": "200"}),
        ("jpki_va_requests_total", {"protocol": "grpc", "method": "Check", "outcome": "OK"}),
        ("jpki_va_request_seconds_count", {"method": "Check"}),
        ("jpki_va_http_request_seconds_count", {"route": "ocsp_post"}),
        ("jpki_va_answers_total", {"status": "good", "cause": "none"}),
        ("jpki_va_answers_total", {"status": "revoked", "cause": "holder-request"}),
    )
    for name, labels in counted:
        # Workers publish their counts every 0.2 s.
        wait_for(lambda n=name, w=labels: metric(pki, n, **w) >= 1, f"{name} {labels}")  # type: ignore[misc]
    status, _, body = fetch(pki.metrics_url)
    assert status == 200
    text = body.decode()
    sequence = metric(pki, "jpki_va_index_sequence")
    assert sequence >= 1
    assert "jpki_va_snapshot_age_seconds " in text
    # Per kind and issuer generation; no series per partition unless asked for.
    assert re.search(
        r'jpki_va_crl_next_update_timestamp_seconds\{issuer="[0-9a-f]{16}",kind="card-auth"\}',
        text,
    )
    assert "partition=" not in text
    assert metric(pki, "jpki_va_ocsp_signer_expiry_timestamp_seconds") > time.time()
    assert 'jpki_va_build_info{python="' in text
    assert metric(pki, "jpki_va_ingest_seconds_count") >= 1


def _auth_only_counts(pki: Pki) -> dict[Provision, int]:
    ledger = read_ledgers(pki.responder.config.ledger_dir)
    try:
        today = datetime.now(UTC).date()
        counts = ledger.counts(today - timedelta(days=1), today + timedelta(days=2))
    finally:
        ledger.close()
    totals: dict[Provision, int] = {}
    for count in counts:
        if count.verifier_id == AUTH_ONLY:
            totals[count.provision] = totals.get(count.provision, 0) + count.count
    return totals


def test_http_follows_the_entitlements_and_counts_provisions(
    pki: Pki, world: dict[str, Issued]
) -> None:
    """Over HTTP as over gRPC: an auth verifier gets auth status and CRLs, nothing else."""
    before = _auth_only_counts(pki)
    status, _, body = post(pki, request_der(world["good"]), verifier=AUTH_ONLY)
    assert ocsp.load_der_ocsp_response(body).certificate_status is ocsp.OCSPCertStatus.GOOD
    for who in (AUTH_ONLY, "no-such-verifier"):
        _, _, body = post(pki, request_der(world["sign"]), verifier=who)
        refused = ocsp.load_der_ocsp_response(body)
        assert refused.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
    crls = {
        name: next(
            urllib.parse.urlsplit(n.value).path
            for p in world[name]
            .certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
            .value
            for n in (p.full_name or [])
            if isinstance(n, x509.UniformResourceIdentifier)
        )
        for name in ("good", "sign")
    }
    assert fetch(pki.http_url + crls["good"], {"X-JPKI-Verifier": AUTH_ONLY})[0] == 200
    status, _, text = fetch(pki.http_url + crls["sign"], {"X-JPKI-Verifier": AUTH_ONLY})
    assert status == 403
    assert b"signing" in text.lower()
    after = _auth_only_counts(pki)
    assert after.get(Provision.AUTH_STATUS, 0) == before.get(Provision.AUTH_STATUS, 0) + 1
    assert after.get(Provision.AUTH_CRL, 0) == before.get(Provision.AUTH_CRL, 0) + 1
    assert after.get(Provision.SIGNING_STATUS, 0) == before.get(Provision.SIGNING_STATUS, 0)


def test_a_delta_snapshot_replaces_the_cached_answers_it_changed(
    pki: Pki, world: dict[str, Issued]
) -> None:
    """A delta changes the live index in place: a cached answer it changed must not
    outlive it, and one it did not change is kept rather than signed again."""
    issued, untouched = pki.issue(CertKind.CARD_AUTH), pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    der = request_der(issued)
    first = post(pki, der)[2]
    assert post(pki, der)[2] == first  # cached
    assert ocsp.load_der_ocsp_response(first).certificate_status is ocsp.OCSPCertStatus.GOOD
    kept = post(pki, request_der(untouched))[2]
    record_loss(pki.signer_stub, CertKind.CARD_AUTH, issued.serial)
    pki.signer_stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=False), timeout=60)

    def revoked() -> bool:
        # Only HTTP asks here: nothing else makes the worker read the index meanwhile.
        answer = ocsp.load_der_ocsp_response(post(pki, der)[2])
        return answer.certificate_status is ocsp.OCSPCertStatus.REVOKED

    wait_for(revoked, "the cached answer to follow the delta")
    # ECDSA signatures differ per signing: the same bytes were kept, not signed again.
    assert post(pki, request_der(untouched))[2] == kept
