"""jpki-va's private object identifiers: one arc, every OID under it defined here.

Every component fits in 32 bits, because common X.509 parsers (Go's crypto/x509
among them) refuse longer arcs: a UUID arc under 2.25 made them reject our
certificates and CRLs.

The default arc is 1.3.6.1.4.1.32473.1, under the private enterprise number that
RFC 5612 reserves for documentation: right for a demo or a test, wrong for a
deployment. An operator sets its own arc (in JPKI, J-LIS has one) in the
environment variable JPKI_VA_OID_ARC of every process (signer, responder, CLI,
verifier library); a value that is no such arc ends the process at start, with one
line on stderr and exit code 2. The arc is fixed for the life of a deployment: the loss cause
of every CRL entry ever signed is read back under it. So the signer writes it into
every signed snapshot manifest and the responder refuses a snapshot made under
another arc (`snapshot/verify.py`), and the signer refuses to start on a registry
first used under another one (`registry_arc_check` in `app/signer_app.py`).

Under the arc:
    .1        CRL entry extension: the law's loss cause (ENUMERATED LossCause)
    .2        EKU of the snapshot-signer certificate
    .3        EKU of the verifier-token signer certificate
    .10.<k>   certificate policy of certificate kind k (CertKind value)
    .20.1-4   the holder's name, address, birth date and sex (otherName in SAN)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography.x509.oid import ObjectIdentifier

from jpki_va.core.cli import EXIT_USAGE, fail

ENV_ARC = "JPKI_VA_OID_ARC"
DEFAULT_ARC = "1.3.6.1.4.1.32473.1"
_MAX_COMPONENT = 2**32 - 1


def valid_arc(text: str) -> str:
    """The arc, checked: dotted decimal, first component 0-2, each within 32 bits."""
    parts = text.strip().split(".")
    if len(parts) < 2 or not all(
        p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts
    ):
        raise ValueError(f"{ENV_ARC} must be a dotted-decimal OID, got {text!r}")
    numbers = [int(p) for p in parts]
    if numbers[0] > 2 or (numbers[0] < 2 and numbers[1] > 39):
        raise ValueError(f"{ENV_ARC}: {text!r} is not a valid OID")
    if any(n > _MAX_COMPONENT for n in numbers):
        raise ValueError(f"{ENV_ARC}: every component of {text!r} must fit in 32 bits")
    return ".".join(parts)


def _arc_of_this_process() -> str:
    try:
        return valid_arc(os.environ.get(ENV_ARC) or DEFAULT_ARC)
    except ValueError as exc:
        # Read once, at import, by every process: a deployment set up wrong must not
        # sign or read a single OID. One line and exit 2, not an import traceback.
        fail(Path(sys.argv[0]).name or "jpki-va", str(exc))
        raise SystemExit(EXIT_USAGE) from None


ARC = _arc_of_this_process()

OID_LOSS_CAUSE = ObjectIdentifier(f"{ARC}.1")
OID_SNAPSHOT_SIGNING = ObjectIdentifier(f"{ARC}.2")
OID_VERIFIER_TOKEN_SIGNING = ObjectIdentifier(f"{ARC}.3")
OID_HOLDER_NAME = ObjectIdentifier(f"{ARC}.20.1")
OID_HOLDER_ADDRESS = ObjectIdentifier(f"{ARC}.20.2")
OID_HOLDER_BIRTH_DATE = ObjectIdentifier(f"{ARC}.20.3")
OID_HOLDER_SEX = ObjectIdentifier(f"{ARC}.20.4")


def policy_oid(kind_value: int) -> ObjectIdentifier:
    """The certificate policy of a certificate kind (its CertKind value)."""
    return ObjectIdentifier(f"{ARC}.10.{kind_value}")
