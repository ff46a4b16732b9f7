"""`jpki-va-client`: the verifier commands, with gRPC's C core quiet.

gRPC's C core logs to stderr from the moment grpc is imported (a TLS handshake that
failed, at INFO); a command says what went wrong in one line of its own. The setting
is read once, at that import, so it is made here, before `_cli` (and grpc) loads;
`jpki_va.client` imports nothing until used. Library users keep their own setting;
an operator who wants the C core's lines sets GRPC_VERBOSITY.
"""

from __future__ import annotations

import os


def main() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from jpki_va.client._cli import main as run  # noqa: PLC0415 (after the setting)

    run()
