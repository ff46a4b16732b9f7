"""The bottom of the server: process plumbing that knows nothing of the domain.

Private files and directories (`private_files`); every layer above may use it, and it
imports nothing of jpki_va.
"""
