"""Hypothesis strategies shared by the test modules (one block per area, to ease merges)."""

from __future__ import annotations

from hypothesis import strategies as st

# -- instruments (tests/test_instrument.py, tests/test_tracing.py) -------------

#: One batch item's plan: (seconds its exec takes, how many of its attempts fail first).
item_plans = st.lists(
    st.tuples(st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=3)),
    min_size=0,
    max_size=12,
)

#: A cap for a parallel batch (None: no cap).
caps = st.one_of(st.none(), st.integers(min_value=1, max_value=6))
