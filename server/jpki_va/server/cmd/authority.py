"""`jpki-va hsm ceremony|ca|ocsp-signer`: the signer's offline commands on its registry.

They sit in the `hsm` command group beside the token commands, but they act on the
signer's registry (its ``--data-dir``) as well as on the token, so they belong to the
signer's CLI; a running signer picks their results up on its next use. This module
builds their parsers and tells the token commands which keys the registry still
uses; the work is done in :mod:`authority_commands`, loaded when a command runs.
"""

from __future__ import annotations

from pathlib import Path

from jpki_va.core.cli import slug_choice
from jpki_va.core.domain import CertKind
from jpki_va.hsm._cli import SubParsers, data_dir_option, token_options
from jpki_va.server.cmd.lazy import lazy


class RegistryKeyUse:
    """The token commands' view of the signer's data directory (hsm's ``KeyUse``)."""

    def ceremonies(self, data_dir: Path) -> dict[str, Path]:
        from jpki_va.server.cmd import authority_commands  # noqa: PLC0415 (see lazy.py)

        return authority_commands.ceremonies(data_dir)

    def users(self, data_dir: Path, label: str) -> list[str]:
        """The CA generations and signers in the registry that use ``label``."""
        from jpki_va.server.cmd import authority_commands  # noqa: PLC0415 (see lazy.py)

        return authority_commands.key_users(data_dir, label)


def add_authority_commands(hsm_group: SubParsers) -> None:
    """Add the registry-backed commands to the `jpki-va hsm` group."""
    common = token_options()
    ceremony = hsm_group.add_parser("ceremony", help="key ceremonies").add_subparsers(
        dest="ceremony_command", required=True, metavar="COMMAND"
    )
    run = ceremony.add_parser(
        "run", parents=[common], help="create what a ceremony config names (idempotent)"
    )
    run.add_argument("config", type=Path, metavar="CONFIG", help="ceremony config (TOML)")
    data_dir_option(run, required=False)
    run.set_defaults(func=lazy("jpki_va.server.cmd.authority_commands:ceremony_run"))

    ca = hsm_group.add_parser("ca", help="issuing-CA generations").add_subparsers(
        dest="ca_command", required=True, metavar="COMMAND"
    )
    rotate = ca.add_parser("rotate", parents=[common], help="new generation: same name, new key")
    rotate.add_argument("--kind", required=True, **slug_choice(CertKind))
    rotate.add_argument(
        "--validity", metavar="DURATION",
        help="lifetime of the new generation, e.g. 4380d (default: as the old)",
    )  # fmt: skip
    data_dir_option(rotate, required=True)
    rotate.set_defaults(func=lazy("jpki_va.server.cmd.authority_commands:ca_rotate"))
    ca_list = ca.add_parser("list", parents=[common], help="the CA generations in the registry")
    data_dir_option(ca_list, required=True)
    ca_list.set_defaults(func=lazy("jpki_va.server.cmd.authority_commands:ca_list"))

    ocsp = hsm_group.add_parser("ocsp-signer", help="delegated OCSP signers").add_subparsers(
        dest="ocsp_command", required=True, metavar="COMMAND"
    )
    issue = ocsp.add_parser(
        "issue", parents=[common], help="certify a responder key (OCSPSigning, ocsp-nocheck)"
    )
    issue.add_argument("--csr", type=Path, required=True, help="PKCS#10 request (PEM or DER)")
    issue.add_argument(
        "--kind",
        **slug_choice(CertKind),
        help="only the active generation of this kind (default: all)",
    )
    issue.add_argument("--validity", default="7d", metavar="DURATION", help="lifetime (default 7d)")
    issue.add_argument("--out", type=Path, required=True, help="PEM file of the certificates")
    data_dir_option(issue, required=True)
    issue.set_defaults(func=lazy("jpki_va.server.cmd.authority_commands:ocsp_signer_issue"))
