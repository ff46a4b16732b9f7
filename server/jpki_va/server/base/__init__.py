"""The bottom of the server: process plumbing that knows nothing of the domain.

Private files and directories (`private_files`), bounded logs of refused input
(`refusal_log`), where /metrics listens (`metrics_http`) and the `build_info` metric;
every layer above may use them, and they import nothing of jpki_va.
"""
