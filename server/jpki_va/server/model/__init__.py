"""Value types that the signer and the responder share, below both."""
