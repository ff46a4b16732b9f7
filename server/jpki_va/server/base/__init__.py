"""The bottom of the server: process plumbing that knows nothing of the domain.

Private files and directories (`private_files`) and bounded logs of refused input
(`refusal_log`); every layer above may use them, and they import nothing of jpki_va.
"""
