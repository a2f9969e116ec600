"""Sync one day's orders from a shop's CSV export to the orders API.

An integration job written as any Prefect flow is; the only addition is
`resumable` above each ``@task`` and the ``@flow``. Its steps::

    read_orders      the trigger: the day's rows of the CSV export
    validate_order   one per row: the Order model checks it
    post_order       one per valid order: POST /orders on the orders API
    write_receipt    one per posted order: a receipt file
    send_summary     one mail to the shop's team, listing the day's orders

What can go wrong, and what the plugin makes of it: a row the model refuses
is a DataError, stored for a person to correct; a 429 from the API is a
RateLimitError and a 503 a ConnectionError, both retried in the run; so is a
mail server that refuses the connection. Retryable failures that outlast the
run's retries are stored and retried later by themselves.

Run it: ``python -m flows.sync_orders --help``.
"""

from __future__ import annotations

import argparse
import csv
import smtplib
import sys
from datetime import date
from decimal import Decimal
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, task
from pydantic import BaseModel, Field, PositiveInt, field_validator

from prefect_incomplete import resumable

__all__ = ["Order", "sync_orders"]

ORDERS_CSV = Path(__file__).with_name("orders.csv")


class Order(BaseModel):
    """One order as the orders API takes it."""

    order_id: str = Field(pattern=r"^A-\d{4}$")
    order_date: date
    customer_email: str
    sku: str = Field(min_length=1)
    quantity: PositiveInt
    unit_price: Decimal = Field(gt=0, decimal_places=2)

    @field_validator("customer_email")
    @classmethod
    def _an_address(cls, value: str) -> str:
        name, at, domain = value.strip().partition("@")
        if not value.strip():
            raise ValueError("a customer email is required")
        if not (name and at and "." in domain):
            raise ValueError(f"{value!r} is not an email address")
        return value.strip()


@resumable
@task
def read_orders(csv_path: str, day: str) -> list[dict[str, str]]:
    """The rows of the export whose order date is `day`."""
    with open(csv_path, newline="", encoding="utf-8") as export:
        return [row for row in csv.DictReader(export) if row["order_date"] == day]


@resumable
@task
def validate_order(
    order_id: str,
    order_date: str,
    customer_email: str,
    sku: str,
    quantity: str,
    unit_price: str,
) -> dict[str, Any]:
    """One CSV row (text cells) checked and converted by the Order model."""
    order = Order.model_validate(
        {
            "order_id": order_id,
            "order_date": order_date,
            "customer_email": customer_email,
            "sku": sku,
            "quantity": quantity,
            "unit_price": unit_price,
        }
    )
    return order.model_dump(mode="json")


@resumable
@task
def post_order(order: dict[str, Any], api_url: str) -> dict[str, Any]:
    """Create the order in the orders API; its confirmation."""
    response = httpx.post(f"{api_url}/orders", json=order, timeout=10)
    response.raise_for_status()
    confirmation: dict[str, Any] = response.json()
    return confirmation


@resumable
@task
def write_receipt(
    order: dict[str, Any], confirmation: dict[str, Any], receipts_dir: str
) -> str:
    """A receipt file for a posted order; its path."""
    total = int(order["quantity"]) * Decimal(order["unit_price"])
    path = Path(receipts_dir) / f"{order['order_id']}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"Order {order['order_id']} of {order['order_date']}\n"
        f"Confirmation {confirmation['confirmation']}\n"
        f"{order['quantity']} x {order['sku']} at {order['unit_price']}: {total}\n"
        f"Sent to {order['customer_email']}\n",
        encoding="utf-8",
    )
    return str(path)


@resumable
@task
def send_summary(
    day: str,
    confirmations: list[dict[str, Any]],
    smtp_host: str,
    smtp_port: int,
    notify: str,
) -> str:
    """Mail the day's synced orders to the team; the message's subject."""
    message = EmailMessage()
    message["From"] = "sync-orders@shop.example"
    message["To"] = notify
    message["Subject"] = f"Orders of {day}: {len(confirmations)} synced"
    message["Message-ID"] = make_msgid(domain="shop.example")
    message.set_content(
        "\n".join(f"{c['order_id']}  {c['confirmation']}" for c in confirmations)
    )
    with smtplib.SMTP(smtp_host, smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
    return str(message["Subject"])


@resumable
@flow(flow_run_name="sync-orders-{day}")
def sync_orders(
    csv_path: str,
    api_url: str,
    receipts_dir: str,
    smtp_port: int,
    day: str,
    smtp_host: str = "127.0.0.1",
    notify: str = "team@shop.example",
) -> list[str]:
    """Post the day's valid orders, write their receipts, mail a summary."""
    rows = read_orders(csv_path, day)
    checks = [validate_order.submit(**row) for row in rows]
    orders = [check.result() for check in checks]

    confirmations = []
    for order in orders:
        confirmation = post_order(order, api_url)
        write_receipt(order, confirmation, receipts_dir)
        confirmations.append(confirmation)

    send_summary(day, confirmations, smtp_host, smtp_port, notify)
    return [confirmation["confirmation"] for confirmation in confirmations]


def main(argv: list[str] | None = None) -> int:
    """Run one sync from the command line; 0 when the run completed."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.sync_orders", description=sync_orders.description
    )
    parser.add_argument("--day", required=True, help="order date, YYYY-MM-DD")
    parser.add_argument("--api-url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--smtp-port", required=True, type=int)
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--receipts-dir", default="receipts")
    parser.add_argument("--csv", default=str(ORDERS_CSV), help="the orders export")
    args = parser.parse_args(argv)

    state = sync_orders(
        csv_path=args.csv,
        api_url=args.api_url,
        receipts_dir=args.receipts_dir,
        smtp_port=args.smtp_port,
        smtp_host=args.smtp_host,
        day=args.day,
        return_state=True,
    )
    print(f"{state.name}: {state.message or ''}".rstrip(": "))
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
