"""jpki-va server side: the signer with its registry, the snapshots, and the responder."""
