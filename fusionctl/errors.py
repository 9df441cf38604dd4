"""The one exception type for mistakes a user can fix; the CLI prints it as a single line."""


class FusionctlError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


def first_line(exc: BaseException) -> str:
    """'Type: first line of the message', or just 'Type' when the message is empty (a bare assert)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
