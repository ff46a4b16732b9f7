"""The registry: the signer's system of record in LMDB."""
