"""Progress reporting from library code, which never prints: the CLI passes a callback."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(description, completed, total)``; ``total == 0`` means "no count, just a status".
ProgressFn = Callable[[str, int, int], None]


def no_progress(description: str, completed: int, total: int) -> None:
    """The default callback: report nothing."""


def status(progress: ProgressFn | None, description: str) -> None:
    """Announce a step without a count (a spinner in the CLI)."""
    (progress or no_progress)(description, 0, 0)
