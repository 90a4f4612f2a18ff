"""Exceptions a user can cause. The CLI prints them as one line and exits non-zero."""
from __future__ import annotations


class LlmfairError(Exception):
    """Base class for errors caused by input, configuration or data (not by bugs)."""


class DataError(LlmfairError, ValueError):
    """A corpus file, column, value or audio file is missing, malformed or unsafe."""


class ConfigError(LlmfairError, ValueError):
    """A configuration key or value is unknown or invalid."""
