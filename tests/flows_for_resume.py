"""Flows that the resume tests import by entrypoint, as a resume does.

Module-level state lets a test decide which steps fail and count how often
each step's function really ran.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
from prefect import flow, task
from pydantic import SecretStr

from prefect_incomplete import errors, resumable

CALLS: Counter[str] = Counter()
RECEIVED: list[dict[str, Any]] = []
BROKEN_PUSH: set[int] = set()
SLOW_PUSH_SECONDS = [0.0]
INTERRUPTED_PUSH: set[int] = set()


class Interrupted(BaseException):
    """Stands for a signal that ends the run's process (Prefect: Crashed)."""


def reset() -> None:
    """Forget every call and failure switch."""
    CALLS.clear()
    RECEIVED.clear()
    BROKEN_PUSH.clear()
    INTERRUPTED_PUSH.clear()
    SLOW_PUSH_SECONDS[0] = 0.0


@resumable
@task
def fetch(day: str) -> list[dict[str, Any]]:
    CALLS["fetch"] += 1
    return [{"id": 1, "qty": 1}, {"id": 2, "qty": 0}, {"id": 3, "qty": 2}]


@resumable
@task
def price(order: dict[str, Any]) -> dict[str, Any]:
    CALLS[f"price-{order['id']}"] += 1
    if order["qty"] <= 0:
        raise errors.DataError(f"order {order['id']}: quantity must be positive")
    return {**order, "total": order["qty"] * 10}


@resumable
@task
def push(priced: dict[str, Any]) -> str:
    CALLS[f"push-{priced['id']}"] += 1
    RECEIVED.append(priced)
    time.sleep(SLOW_PUSH_SECONDS[0])
    if priced["id"] in INTERRUPTED_PUSH:
        raise Interrupted(f"interrupted while pushing order {priced['id']}")
    if priced["id"] in BROKEN_PUSH:
        raise errors.InvalidConfigurationError(f"no route for order {priced['id']}")
    return f"pushed-{priced['id']}"


@resumable
@flow
def orders(day: str = "2026-12-01") -> list[str]:
    return [push(price(order)) for order in fetch(day)]


@resumable
@task
async def price_async(order: dict[str, Any]) -> dict[str, Any]:
    return price.fn(order)


@resumable
@flow
async def orders_async(day: str = "2026-12-01") -> list[str]:
    results = []
    for order in fetch(day):
        results.append(push(await price_async(order)))
    return results


@resumable
@task
def flaky_push(order: int) -> str:
    CALLS[f"flaky-{order}"] += 1
    if order in BROKEN_PUSH:
        raise errors.ConnectionError(f"service down for order {order}")
    return f"pushed-{order}"


@resumable
@task
def order_ids() -> list[int]:
    CALLS["order_ids"] += 1
    return [1, 2]


@resumable
@flow
def flaky_orders() -> list[str]:
    return [flaky_push(order) for order in order_ids()]


@resumable
@flow
def orders_mapped(day: str = "2026-12-01") -> list[str]:
    priced = price.map(fetch(day))
    return [push(item) for item in priced.result()]


@resumable
@flow(retries=1, retry_delay_seconds=0)
def orders_with_retries(day: str = "2026-12-01") -> list[str]:
    return [push(price(order)) for order in fetch(day)]


@resumable
@task
def send(client: httpx.Client, order: int) -> str:
    CALLS[f"send-{order}"] += 1
    if order in BROKEN_PUSH:
        raise errors.DataError(f"order {order} was refused")
    return f"sent-{order}"


@resumable
@flow
def orders_with_client() -> list[str]:
    with httpx.Client() as client:  # an input that no pickle can hold
        return [send(client, order) for order in order_ids()]


@resumable
@task
def order_dates() -> set[str]:
    CALLS["order_dates"] += 1
    return {"2026-12-01", "2026-12-02"}  # JSON cannot hold a set: pickled


@resumable
@flow
def orders_by_date() -> list[str]:
    return [flaky_push(len(day)) for day in sorted(order_dates())]


@resumable
@flow
def orders_signed(
    day: str = "2026-12-01", batch: int = 1, password: str = "pw-SECRET-5150"
) -> list[str]:
    return [push(price(order)) for order in fetch(day)]


@resumable
@task
async def price_later(order: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.5 if order["id"] == 3 else 0)  # ends after order 2 fails
    CALLS[f"later-{order['id']}"] += 1
    return price.fn(order)


@resumable
@flow
async def orders_gathered(day: str = "2026-12-01") -> list[dict[str, Any]]:
    return list(await asyncio.gather(*[price_later(order) for order in fetch(day)]))


FIRST_KEY = SecretStr("key-of-the-first-run")


@resumable
@flow
def orders_keyed(day: str = "2026-12-01", api_key: SecretStr = FIRST_KEY) -> list[str]:
    CALLS[f"signed-with-{api_key.get_secret_value()}"] += 1
    return [push(price(order)) for order in fetch(day)]
