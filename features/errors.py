"""The one base class of input errors: a stage reports these as a message, not a traceback."""


class SaefsError(ValueError):
    """Bad input or configuration; the message names the input and the fix."""
