"""Errors a user can act on.

Every error that reaches the command line is a NetmuxError: it prints as one line and
exits with status 2 (bad input) or 1 (the system did not do what was asked). Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class NetmuxError(Exception):
    """An error with a message meant for the user; `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(NetmuxError):
    """Bad input: a file, key, argument or name that is not allowed. Nothing was changed."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value is wrong. Names the source, the key, the value and what is allowed."""

    def __init__(self, source: str, key: str, value: object, allowed: str) -> None:
        self.source = source
        self.key = key
        self.value = value
        self.allowed = allowed
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {value!r} is not allowed; {allowed}")


class StateError(NetmuxError):
    """The system is not in the state an operation needs (missing mux, name in use, ...)."""
