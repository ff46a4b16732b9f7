"""The throwaway TLS PKI of the tests (it lives with the bench, whose fleet uses it)."""

from jpki_va.bench.tls_ca import TlsCa, TlsIdentity

__all__ = ["TlsCa", "TlsIdentity"]
