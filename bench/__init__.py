"""The benchmark harness: national-scale data, load on every interface, ceilings, peers.

`jpki-va bench …` drives it; nothing here is imported by the signer or the responder.
"""
