"""The AlgoPerf-style benchmark and VeLO's speed-up view, on task-family suites.

What (`workloads`), how (`submissions`), clock (`runner`, `study`), score
(`scoring`, pure functions of logs), plots (`plots`) and the report
(`report`) are separate modules; `python -m evaluation` is the command line.
"""
