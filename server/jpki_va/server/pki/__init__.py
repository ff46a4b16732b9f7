"""X.509, CRL and OCSP encodings and profiles: what we sign, byte by byte."""
