"""The `jpki-va` command line: argv to a role's composition root.

gRPC's C core logs to stderr from the moment grpc is imported (a TLS handshake that
failed, at INFO); a command says what went wrong in one line of its own, and a role
logs through its own log format. The setting is read once, at that import, so it is
made here, in the first module of the command line to load. An operator who wants the
C core's lines sets GRPC_VERBOSITY (the responder's workers inherit either).
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
