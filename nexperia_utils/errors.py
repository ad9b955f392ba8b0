"""Exceptions raised for bad input. Each message names the offending file and the fix."""
from __future__ import annotations


class DataError(ValueError):
    """Input data (images, folders, CSV files) is missing, malformed or inconsistent."""


class ConfigError(ValueError):
    """A parameter or profile value is invalid."""
