"""What storing one incomplete execution costs, for a flow of N completed steps.

Times the whole failure path of a real flow run (ledger to record, store,
artifacts, event) against plain Prefect's failure of the same flow, and the
store's `add` alone, on SQLite (and PostgreSQL with --postgres URL).

    .venv/bin/python benchmarks/record_cost.py [--steps 100] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default=None)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="bench-")
    os.environ.setdefault("PREFECT_HOME", home)
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    urls = {"sqlite": f"sqlite:///{home}/incomplete.db"}
    if args.postgres:
        urls["postgresql"] = args.postgres

    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        for label, url in urls.items():
            os.environ["PREFECT_INCOMPLETE_DATABASE_URL"] = url
            report(label, args.steps, args.rounds)


def report(label: str, steps: int, rounds: int) -> None:
    from prefect import flow, task

    from prefect_incomplete import errors, resumable
    from prefect_incomplete.store import Store

    def body(n: int) -> dict[str, Any]:
        return {"order": n, "sku": f"SKU-{n:05d}", "qty": n % 7, "note": "x" * 40}

    def failing(n: int) -> None:
        raise errors.DataError(f"order {n} has no address")

    plain_step, plain_fail = task(body, name="push"), task(failing, name="fail")
    r_step = resumable(task(body, name="push"))
    r_fail = resumable(task(failing, name="fail"))

    @flow
    def plain() -> None:
        for n in range(steps):
            plain_step(n)
        plain_fail(steps)

    @resumable
    @flow
    def decorated() -> None:
        for n in range(steps):
            r_step(n)
        r_fail(steps)

    from prefect_incomplete import _recording

    inside: list[float] = []
    original = _recording.store_failure

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - started)

    _recording.store_failure = timed
    plain(return_state=True)
    decorated(return_state=True)
    plain_times, decorated_times = [], []
    for _ in range(rounds):
        for job, times in ((plain, plain_times), (decorated, decorated_times)):
            started = time.perf_counter()
            job(return_state=True)
            times.append(time.perf_counter() - started)

    store = Store()
    record = store.list(limit=1)[0]
    add_times = []
    for _ in range(rounds):
        copy = record.model_copy(update={"id": __import__("uuid").uuid4()})
        started = time.perf_counter()
        store.add(copy)
        add_times.append(time.perf_counter() - started)

    plain_ms = statistics.median(plain_times) * 1000
    decorated_ms = statistics.median(decorated_times) * 1000
    print(f"{label}: flow of {steps} completed steps and one failed step")
    print(f"  plain Prefect run that fails  {plain_ms:8.1f} ms")
    print(f"  resumable run that stores     {decorated_ms:8.1f} ms")
    print(f"  difference (the record)       {decorated_ms - plain_ms:8.1f} ms")
    print(f"  ratio                         {decorated_ms / plain_ms:8.3f}")
    inside_ms = statistics.median(inside[1:]) * 1000
    add_ms = statistics.median(add_times) * 1000
    print(f"  failure path of the plugin    {inside_ms:8.1f} ms  (record, store, UI)")
    print(f"  Store.add alone               {add_ms:8.1f} ms")
    print(f"  record size as stored         {record.size_bytes:8d} bytes")


if __name__ == "__main__":
    main()
