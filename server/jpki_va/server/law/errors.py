"""Why the registry refuses an operation: the refusal names the unmet condition."""


class Refused(Exception):
    """A legal precondition is not met; nothing was changed."""
