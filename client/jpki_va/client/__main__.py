"""`python -m jpki_va.client`: the verifier commands (the `jpki-va-client` script)."""

from jpki_va.client._main import main

main()
