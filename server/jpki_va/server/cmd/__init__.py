"""The `jpki-va` command line: argv to a role's composition root."""
