"""What `resumable` costs on the happy path, as a ratio to plain Prefect.

Runs the same flow of N task calls, plain and decorated, alternately, several
times each in one process against one Prefect server, and prints the median
time of each and their ratio. The decorated runs point the store at a path
that cannot exist, so any database I/O would fail the run.

    .venv/bin/python benchmarks/happy_path.py [--tasks 50] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any


def build(tasks: int) -> tuple[Any, Any]:
    from prefect import flow, task

    from prefect_incomplete import resumable

    @task
    def step(n: int) -> int:
        return n + 1

    @flow
    def plain() -> int:
        return sum(step(n) for n in range(tasks)) + sum(step.map(range(tasks)).result())

    r_step = resumable(task(step.fn, name="step"))

    @resumable
    @flow
    def decorated() -> int:
        return sum(r_step(n) for n in range(tasks)) + sum(
            r_step.map(range(tasks)).result()
        )

    return plain, decorated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-"))
    os.environ["PREFECT_INCOMPLETE_DATABASE_URL"] = "sqlite:////proc/no/such/dir/x.db"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        plain, decorated = build(args.tasks)
        plain()
        decorated()
        times: dict[str, list[float]] = {"plain": [], "resumable": []}
        for _ in range(args.rounds):
            for name, job in (("plain", plain), ("resumable", decorated)):
                started = time.perf_counter()
                job()
                times[name].append(time.perf_counter() - started)

    medians = {name: statistics.median(values) for name, values in times.items()}
    calls = 2 * args.tasks
    print(f"flow of {calls} task runs, median of {args.rounds} rounds each")
    for name, value in medians.items():
        print(f"  {name:10} {value * 1000:8.1f} ms")
    print(f"  ratio      {medians['resumable'] / medians['plain']:8.3f}")


if __name__ == "__main__":
    main()
