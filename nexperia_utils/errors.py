"""Exceptions raised for bad input, and the two ways their messages list offenders.

Each message names the offending file and the fix; where many items are at fault it shows the first
few and counts the rest (:func:`preview` on one line, :func:`format_listing` one per line).
"""
from __future__ import annotations

from typing import Sequence

#: How many offending items a multi-line listing shows before counting the rest.
MAX_LISTED = 20
#: How many offending items a one-line preview shows.
MAX_PREVIEWED = 5


class DataError(ValueError):
    """Input data (images, folders, CSV files) is missing, malformed or inconsistent."""


class ConfigError(ValueError):
    """A parameter or profile value is invalid."""


def preview(values: Sequence[object], n: int = MAX_PREVIEWED) -> str:
    """``'a', 'b', 'c' (+7 more)``: the first ``n`` values and a count of the rest, for one-line messages."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (f" (+{len(values) - n} more)" if len(values) > n else "")


def format_listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """Indented list of the first ``limit`` items plus a line counting the rest."""
    lines = [f"    {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)
