"""Errors raised by trioflow: the failure of a parallel batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BatchError"]


class BatchError(ExceptionGroup[Exception]):
    """A parallel batch failed: one or more items raised after their retries.

    It is an :class:`ExceptionGroup`, so ``except* ValueError`` picks the item
    failures you care about.  Each inner exception carries a note (see
    ``__notes__``) naming the index of the item it came from.

    Attributes:
        completed: maps the index of every item that finished before the batch
            stopped to its result, so partial work is not lost::

                try:
                    results = await trioflow.parallel_map(fetch, urls, max_concurrency=8)
                except trioflow.BatchError as err:
                    results = err.completed  # {index: result}

    ``trio.Cancelled`` and other ``BaseException`` s are never put in a
    ``BatchError``: they propagate unchanged.
    """

    completed: dict[int, Any]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        completed: Mapping[int, Any] | None = None,
    ) -> BatchError:
        self = super().__new__(cls, message, exceptions)
        self.completed = dict(completed or {})
        return self

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        completed: Mapping[int, Any] | None = None,
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> BatchError:  # type: ignore[override]
        """Keep the type and ``completed`` when ``split``/``subgroup`` copy the group."""
        return BatchError(self.message, excs, self.completed)


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``."""
    exc.add_note(note)
