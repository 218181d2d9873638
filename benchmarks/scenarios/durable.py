"""Scenario 7, ``durable``: a store's cost and a resume after a kill (the module is :mod:`benchmarks.durable`)."""

from __future__ import annotations

from ..durable import SCENARIO as SCENARIO
