"""The error a wrong setting raises, and the one line every entry point prints for it.

Kept out of :mod:`hybridrec.config.loader` (which re-exports all three) so that
:mod:`hybridrec.config.checks`, which that module calls, can raise it without an import cycle.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped, so an error is one line."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class ConfigError(ValueError):
    """A config file, override or argument is wrong; the message (one line) names the key and
    where it was set."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def error_line(exc: ConfigError) -> str:
    """What every entry point prints to stderr (then exits with status 2)."""
    return f"hybridrec: config error: {one_line(str(exc))}"
