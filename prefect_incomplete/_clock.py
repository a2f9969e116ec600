"""The plugin's one clock, so tests can move time instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["now"]


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)
