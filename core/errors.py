"""Errors that mean "the user asked for something we cannot do"; the CLI prints them as one line."""

__all__ = ["SmoothrotError"]


class SmoothrotError(ValueError):
    """Bad input: a missing path, an unsupported model, a corrupt file, a wrong option.

    The CLI turns it into ``smoothrot: error: <message>`` and exit status 2, never a traceback.
    """
