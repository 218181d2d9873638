"""trioflow's parallel-batch benchmark, side by side with the alternatives.

``python -m benchmarks [--quick] [--json PATH] [--plot PATH]`` times, in one
process and with alternating runs, trioflow's ``ParallelBatchNode`` and
``ParallelBatchFlow`` against PocketFlow, asyncio ``gather`` + ``Semaphore``,
aiometer on Trio, a raw Trio nursery and a hand-written Trio worker pool;
it measures each configuration's peak memory in a fresh child process.
"""
