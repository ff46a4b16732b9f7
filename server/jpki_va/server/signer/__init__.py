"""The signer: registry changes, HSM signatures and publishing snapshots."""
