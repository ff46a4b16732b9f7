"""Snapshots: the contract between the signer and the responder (DESIGN §3)."""
