"""Throttle: limits the way LLM APIs enforce them (the admit stage of a batch).

This module also holds the readers of a provider's throttling answer that the
retry policy uses without a Throttle: :func:`is_throttle_error` and
:func:`retry_after_of`.  They understand the exception shapes of the clients
people use (httpx, aiohttp, the openai and anthropic SDKs, anything with a
``status_code``/``status`` or ``retry_after`` attribute) without importing any.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["is_throttle_error", "retry_after_of"]

#: HTTP statuses that mean "slow down": too many requests, unavailable, overloaded (Anthropic).
THROTTLE_STATUSES = frozenset({429, 503, 529})

#: Error codes of a quota that is used up: waiting will not help, so not a throttle.
QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached", "quota_exceeded")


def _int_status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries: ``exc.status_code``, ``exc.status``, or its ``response``'s."""
    for holder in (exc, getattr(exc, "response", None)):
        if holder is None:
            continue
        for attr in ("status_code", "status"):
            status = _int_status(getattr(holder, attr, None))
            if status is not None:
                return status
    return None


def headers_of(exc: BaseException) -> Mapping[str, str] | None:
    """The response headers an exception carries (``exc.headers`` or ``exc.response.headers``)."""
    for holder in (exc, getattr(exc, "response", None)):
        headers = getattr(holder, "headers", None) if holder is not None else None
        if headers is not None and hasattr(headers, "get"):
            return headers  # type: ignore[no-any-return]
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    return None if value is None else str(value)


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if hasattr(value, "total_seconds"):  # a timedelta
        return _seconds(value.total_seconds())
    return None


def retry_after_of(exc: BaseException) -> float | None:
    """The wait in seconds a provider asked for in ``exc``, or None when it asked for none.

    Reads, in order: a ``retry-after-ms`` header (OpenAI, Anthropic), a
    ``retry-after`` header in seconds or as an HTTP date, then an
    ``exc.retry_after`` attribute (seconds or a timedelta).
    """
    headers = headers_of(exc)
    if headers is not None:
        ms = _header(headers, "retry-after-ms")
        if ms is not None:
            try:
                got = _seconds(float(ms) / 1000)
            except ValueError:
                got = None
            if got is not None:
                return got
        after = _header(headers, "retry-after")
        if after is not None:
            try:
                got = _seconds(float(after))
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(after)
                except (TypeError, ValueError, IndexError):
                    when = None
                got = None if when is None else max(0.0, when.timestamp() - time.time())
            if got is not None:
                return got
    return _seconds(getattr(exc, "retry_after", None))


def _is_quota_error(exc: BaseException) -> bool:
    for value in (getattr(exc, "code", None), getattr(exc, "type", None), getattr(exc, "body", None), str(exc)):
        text = value if isinstance(value, str) else repr(value) if value is not None else ""
        if any(code in text for code in QUOTA_CODES):
            return True
    return False


def is_throttle_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the provider is throttling (slow down and try again).

    True for an HTTP 429, 503 or 529 status (on ``exc.status_code``,
    ``exc.status`` or ``exc.response.status_code``) or an ``exc.retry_after``
    attribute; False for a quota that is used up (``insufficient_quota``):
    waiting does not help there.
    """
    if not isinstance(exc, Exception):
        return False
    status = status_of(exc)
    if status in THROTTLE_STATUSES or _seconds(getattr(exc, "retry_after", None)) is not None:
        return not _is_quota_error(exc)
    return False
