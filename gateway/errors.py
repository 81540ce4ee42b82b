"""The base of every error that is the user's to fix (bad input, config, state)."""


class UserError(Exception):
    """Shown by the CLI as one line on stderr; never a traceback."""


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: the file, and what to do about permissions."""
    if not exc.filename:  # e.g. a socket: no file to name, and no owner to become
        return str(exc.strerror or exc)
    if isinstance(exc, PermissionError):
        return (f"{exc.filename}: permission denied (run lichen as the user that owns the "
                "state directory, e.g. with sudo)")
    return f"{exc.filename}: {exc.strerror or exc}"
