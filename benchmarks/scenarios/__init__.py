"""The scenario registry: every module of this package that defines ``SCENARIO`` is a scenario.

Add a scenario by adding a module here (``api.py``, ``dask_scale.py``, ...) with a
module-level ``SCENARIO = benchmarks.core.Scenario(...)``; nothing else to edit.
A module whose name starts with ``_`` is skipped.  See ``benchmarks/README.md``.

A module that cannot be imported does not stop the others: it is listed in
:attr:`Registry.broken` and reported in the run's table, as "not available" when a
dependency is missing (``ModuleNotFoundError`` for a module outside ``benchmarks``,
``trioflow`` and ``adapters``, e.g. an extra not installed) and as "failed" otherwise (the exit code is then 1).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass

from ..core import Scenario

__all__ = ["Registry", "discover", "get", "module_of", "registry"]

_OURS = ("benchmarks", "trioflow", "adapters")


@dataclass(frozen=True)
class Registry:
    """The scenarios found, in table order (``order``, then name).

    Attributes:
        scenarios: name to scenario.
        modules: name to the dotted module that defines it (the memory child imports only that).
        broken: module name to why it did not load (``"not available: ..."`` or ``"failed: ..."``).
    """

    scenarios: dict[str, Scenario]
    modules: dict[str, str]
    broken: dict[str, str]


def discover(package: str = __name__) -> Registry:
    """Import every public module of ``package`` and collect its ``SCENARIO``."""
    root = importlib.import_module(package)
    found: list[tuple[Scenario, str]] = []
    broken: dict[str, str] = {}
    for info in pkgutil.iter_modules(root.__path__):
        if info.name.startswith("_"):
            continue
        dotted = f"{package}.{info.name}"
        try:
            module = importlib.import_module(dotted)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] in _OURS:
                broken[info.name] = f"failed: import raised {exc!r}"  # a typo of ours, not a missing extra
            else:
                broken[info.name] = f"not available: {exc}"
            continue
        except Exception as exc:
            broken[info.name] = f"failed: import raised {type(exc).__name__}: {exc}"
            continue
        scenario = getattr(module, "SCENARIO", None)
        if not isinstance(scenario, Scenario):
            broken[info.name] = f"failed: {dotted} has no SCENARIO = Scenario(...)"
            continue
        found.append((scenario, dotted))
    for name in {s.name for s, _ in found}:
        same = [m for s, m in found if s.name == name]
        if len(same) > 1:  # neither wins: which one was meant is for a person to say
            for dotted in same:
                broken[dotted.rsplit(".", 1)[1]] = f"failed: {' and '.join(same)} both register {name!r}"
            found = [(s, m) for s, m in found if s.name != name]
    found.sort(key=lambda sm: (sm[0].order, sm[0].name))
    return Registry({s.name: s for s, _ in found}, {s.name: m for s, m in found}, broken)


@functools.cache
def registry() -> Registry:
    """The scenarios of this package (discovered once per process)."""
    return discover()


def get(name: str) -> Scenario:
    """The registered scenario called ``name``.

    Raises:
        KeyError: no such scenario (the message lists the registered ones).
    """
    found = registry().scenarios.get(name)
    if found is None:
        raise KeyError(f"no scenario {name!r}; registered: {', '.join(registry().scenarios)}")
    return found


def module_of(name: str) -> str:
    """The dotted module that defines scenario ``name``."""
    get(name)
    return registry().modules[name]
