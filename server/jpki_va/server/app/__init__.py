"""Composition roots: config in, a running signer, responder or demo out."""
