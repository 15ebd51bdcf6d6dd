"""Errors that mean "the user asked for something we cannot do"; the CLI prints them as one line."""

__all__ = ["SmoothrotError", "Terminated"]


class SmoothrotError(ValueError):
    """Bad input: a missing path, an unsupported model, a corrupt file, a wrong option.

    The CLI turns it into ``smoothrot: error: <message>`` and exit status 2, never a traceback.
    """


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, SIGHUP): raised in the main thread by the CLI's
    signal handler so every ``with`` block cleans up, like ``KeyboardInterrupt`` for SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
