"""Errors that end a run with one clear line and exit code 2 (bad path, bad config)."""


class UsageError(Exception):
    """A problem with what the user asked for: bad path, unknown format, invalid config.

    The CLI prints ``error: <message>`` on one line and exits with code 2.
    """
