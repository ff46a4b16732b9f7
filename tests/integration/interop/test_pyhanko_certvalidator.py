"""pyhanko-certvalidator (Python, asn1crypto: no OpenSSL) judges the demo certificates
with revocation information required for every certificate of the path, fetched over
HTTP from the URLs the certificates carry: the issuing CA from AIA caIssuers, the end
entity by OCSP or by its CRL and delta CRL, the issuing CA by the root's ARL."""

from __future__ import annotations

import asyncio

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import PathValidationError, RevokedError
from pyhanko_certvalidator.fetchers.aiohttp_fetchers import AIOHttpFetcherBackend
from pyhanko_certvalidator.policy_decl import (
    CertRevTrustPolicy,
    RevocationCheckingPolicy,
    RevocationCheckingRule,
)

from tests.integration.interop.conftest import Demo
from tests.support import Issued, Pki

# The end entity by OCSP, or by CRLs; the issuing CA (which names no OCSP responder)
# always by the root's ARL. Either way every certificate of the path must be checked.
_RULES = {
    "ocsp": RevocationCheckingRule.OCSP_REQUIRED,
    "crl": RevocationCheckingRule.CRL_REQUIRED,
}


async def _judge(root: bytes, cert: bytes, mode: str) -> str:
    policy = CertRevTrustPolicy(
        RevocationCheckingPolicy(
            ee_certificate_rule=_RULES[mode],
            intermediate_ca_cert_rule=RevocationCheckingRule.CRL_REQUIRED,
        )
    )
    async with AIOHttpFetcherBackend(per_request_timeout=10) as fetchers:
        context = ValidationContext(
            trust_roots=[asn1_x509.Certificate.load(root)],
            allow_fetching=True,
            revinfo_policy=policy,
            fetchers=fetchers,
        )
        validator = CertificateValidator(
            asn1_x509.Certificate.load(cert), validation_context=context
        )
        try:
            path = await validator.async_validate_usage(set())  # type: ignore[no-untyped-call]
        except RevokedError as exc:
            return f"REVOKED {exc.failure_msg}"
        except PathValidationError as exc:
            return f"INVALID {exc.failure_msg}"
        return f"VALID {path.pkix_len}"


def judge(pki: Pki, issued: Issued, mode: str) -> str:
    return asyncio.run(
        _judge(
            pki.root.public_bytes(Encoding.DER),
            issued.certificate.public_bytes(Encoding.DER),
            mode,
        )
    )


@pytest.mark.parametrize("mode", ["ocsp", "crl"])
def test_pyhanko_certvalidator_judges_good_revoked_and_cascaded(
    linked_pki: Pki, demo: Demo, mode: str
) -> None:
    got = {
        name: judge(linked_pki, issued, mode)
        for name, issued in {
            "good": demo.good,
            "revoked": demo.revoked,
            "cascaded": demo.cascaded,
            "revoked_in_delta": demo.revoked_in_delta,
        }.items()
    }
    # A path of two: the issuing CA came from the certificate's AIA caIssuers URL.
    assert got["good"] == "VALID 2", got
    source = "OCSP response" if mode == "ocsp" else "CRL"
    assert got["revoked"].startswith(f"REVOKED {source} indicates"), got
    assert got["revoked"].endswith("due to a compromised key."), got
    assert got["cascaded"].startswith(f"REVOKED {source} indicates"), got
    assert got["cascaded"].endswith("due to a cessation of operation."), got
    # After the full CRL: OCSP answers from the applied delta snapshot; by CRL, the
    # validator finds the loss on the delta CRL that the full CRL's freshestCRL names.
    assert got["revoked_in_delta"].endswith("due to a compromised key."), got
