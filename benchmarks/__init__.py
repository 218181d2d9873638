"""trioflow's benchmark, side by side with the alternatives, checked against the performance contract in README.md.

``python -m benchmarks [--quick | --smoke] [--scenario NAME ...] [--json PATH] [--plot PATH]
[--markdown PATH] [--list]`` runs, in one process and with alternating runs, each
registered scenario's groups (trioflow against PocketFlow, asyncio, aiometer, raw Trio
and the leanest hand-written Trio pool, ...), measures each configuration's peak memory
in a fresh child process, and prints one table and the targets.

How to add a scenario (``benchmarks/README.md`` has the whole API and a complete example):

1. Create ``benchmarks/scenarios/<name>.py`` (``dask_scale.py`` for ``dask-scale``).
2. Write ``plan(mode) -> list[Group]`` (groups for ``"full"``, ``"quick"``, ``"smoke"``; the
   smoke plan about a second) and ``once(group, system) -> (wall s, CPU s)`` (one timed run
   of one system; it also runs alone in the memory child), or ``run(group, context) ->
   Result`` for a loop of your own.
3. Optionally ``targets(results)``, ``panels(results)``, ``tables(results)``,
   ``notes(results)``: they get your results only.
4. End the module with ``SCENARIO = Scenario(name=..., title="5 ...", about=..., plan=plan,
   once=once, ...)`` (types in :mod:`benchmarks.core`).

The registry (:mod:`benchmarks.scenarios`) finds it: ``--scenario <name>`` runs it alone,
the default run includes it, and ``tests/test_benchmarks_smoke.py`` runs its smoke plan.
No other file needs an edit.
"""
