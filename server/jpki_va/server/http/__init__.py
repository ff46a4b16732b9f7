"""The HTTP transport: OCSP (RFC 6960 appendix A) and CRLs over HTTP/1.1."""
