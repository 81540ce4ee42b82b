"""The base of every error that is the user's to fix (bad input, config, state)."""


class UserError(Exception):
    """Shown by the CLI as one line on stderr; never a traceback."""
