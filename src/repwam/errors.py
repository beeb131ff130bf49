"""One exception type for bad user input: the CLI prints its message, never a traceback."""


class RepwamError(Exception):
    """A user-facing error: bad input, missing file, wrong name. The message says what and where."""
