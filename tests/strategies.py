"""Hypothesis strategies shared by the test modules.

Keep each module's additions in its own block below, so that merges stay easy.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# -- core semantics (tests/test_node.py, test_flow.py, test_batch.py) -------------------------

#: a retry wait or a similar delay in seconds, 0 included (MockClock time, so big is cheap)
retry_delays = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)

#: a node or flow ``params`` dict: short str keys to simple JSON-like values
params_dicts: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(alphabet="abcdefxyz", min_size=1, max_size=3),
    st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans()),
    max_size=5,
)

#: the items a batch prep returns
batch_items: st.SearchStrategy[list[Any]] = st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=20)

# -- end of core semantics block ------------------------------------------------------------

# -- instruments (tests/test_instrument.py, tests/test_tracing.py) -------------

#: One batch item's plan: (seconds its exec takes, how many of its attempts fail first).
item_plans = st.lists(
    st.tuples(st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=3)),
    min_size=0,
    max_size=12,
)

# (``caps``, a cap for a parallel batch, is defined in the worker pool block below.)

# ---------------------------------------------------------------------------
# Worker pool (tests/test_parallel.py): item durations, caps, limits, failures.
# Durations are in seconds of MockClock time and are sums of powers of two, so
# that mock-clock arithmetic is exact and completion times can be compared.
# ---------------------------------------------------------------------------

durations = st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0])
"""How long one item (or one attempt) sleeps, in mock seconds."""


def duration_lists(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[list[float]]:
    """One duration per item of a batch."""
    return st.lists(durations, min_size=min_size, max_size=max_size)


caps = st.none() | st.integers(min_value=1, max_value=6)
"""A ``max_concurrency``: None (no cap) or a small cap, smaller or larger than the batch."""

tokens = st.integers(min_value=1, max_value=6)
"""The total tokens of a ``trio.CapacityLimiter``."""

rates = st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0])
"""A ``max_per_second`` whose interval (1 / rate) is exact in binary."""

input_kinds = st.sampled_from(["list", "generator", "async generator"])
"""What a batch's ``prep`` returns (or what ``parallel_map`` is given)."""


@st.composite
def failure_positions(draw: st.DrawFn, n: int, min_size: int = 1) -> frozenset[int]:
    """Indices (among ``n`` items) of the items that fail; at least ``min_size`` of them."""
    return draw(st.frozensets(st.integers(min_value=0, max_value=n - 1), min_size=min_size)) if n else frozenset()


@st.composite
def retry_plans(draw: st.DrawFn, n: int) -> tuple[int, list[int]]:
    """``(max_retries, failed_attempts)``: item i fails its first ``failed_attempts[i]`` attempts,
    always fewer than ``max_retries``, so every item succeeds in the end."""
    max_retries = draw(st.integers(min_value=1, max_value=4))
    failed = draw(st.lists(st.integers(min_value=0, max_value=max_retries - 1), min_size=n, max_size=n))
    return max_retries, failed


# ---------------------------------------------------------------------------
