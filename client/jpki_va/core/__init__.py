"""The vocabulary every part of jpki-va shares: kinds, causes, clocks, tokens."""
