"""The flow that `resume_latency.py` resumes, and the runner that serves it.

`orders` fetches three orders and prices each; order 2 has quantity 0, so its
`price` step fails with a `DataError` until a resume corrects its input. Run
as a script, this module serves `orders` as the deployment
``latency-orders/latency`` with the resume trigger, until it is terminated:

    .venv/bin/python benchmarks/_latency_flows.py [deployment|flow]

``deployment`` (the default) serves ``orders.to_deployment(...)`` with
`prefect.serve`: the runner starts each run with ``python -m prefect.engine``,
which imports the flow from its entrypoint. ``flow`` calls ``orders.serve``:
the runner pickles the flow object with cloudpickle into each run's process.

It reads `PREFECT_API_URL`, `PREFECT_RUNNER_POLL_FREQUENCY` and
`PREFECT_INCOMPLETE_DATABASE_URL` from the environment.
"""

from __future__ import annotations

import sys
from typing import Any

import prefect
from prefect import flow, task

from prefect_incomplete import errors, resumable
from prefect_incomplete.resume import resume_trigger

FLOW_NAME = "latency-orders"
DEPLOYMENT_NAME = "latency"


@resumable
@task
def fetch(day: str) -> list[dict[str, Any]]:
    return [{"id": 1, "qty": 1}, {"id": 2, "qty": 0}, {"id": 3, "qty": 2}]


@resumable
@task
def price(order: dict[str, Any]) -> dict[str, Any]:
    if order["qty"] <= 0:
        raise errors.DataError(f"order {order['id']}: quantity must be positive")
    return {**order, "total": order["qty"] * 10}


@resumable
@flow(name=FLOW_NAME)
def orders(day: str = "2026-12-01") -> list[dict[str, Any]]:
    return [price(order) for order in fetch(day)]


def serve(how: str = "deployment") -> None:
    """Serve `orders` with the resume trigger until the process is terminated."""
    triggers = [resume_trigger(orders)]
    if how == "flow":
        orders.serve(name=DEPLOYMENT_NAME, triggers=triggers)
    else:
        prefect.serve(orders.to_deployment(name=DEPLOYMENT_NAME, triggers=triggers))


if __name__ == "__main__":
    # Serve the flow of the importable module `_latency_flows`, not the copy in
    # `__main__`, so that records name an entrypoint the benchmark can import.
    import _latency_flows

    _latency_flows.serve(*sys.argv[1:2])
