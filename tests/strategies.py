"""Hypothesis strategies shared by the tests."""

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

#: A cap for a parallel batch (None: no cap).
caps = st.one_of(st.none(), st.integers(min_value=1, max_value=6))
