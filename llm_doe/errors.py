"""The error every check of user input raises (re-exported by :mod:`llm_doe.schema`)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: a config key (or file) and what is wrong with it.

    The entry point prints ``str(error)`` on one line and exits with status 2.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
