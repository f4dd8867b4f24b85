"""The one exception type the command line turns into a one-line message."""


class EhrcxrError(Exception):
    """A user-facing error: the message is one line, safe to print (never holds a password)."""
