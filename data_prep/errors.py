"""The one exception type that user-facing commands print without a traceback."""


class PrepareError(Exception):
    """Bad input or an impossible request; the message says what and what to do."""
