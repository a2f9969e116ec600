"""prefect-incomplete: incomplete executions for Prefect 3.

Decorate tasks and flows with `resumable`. A failed step is classified into
the taxonomy of `prefect_incomplete.errors`; retryable kinds are retried in
the run; a failure a person must look at is stored as an incomplete
execution, shown in the Prefect UI, and resumed later from the failed step.
"""

from __future__ import annotations

from prefect_incomplete import errors
from prefect_incomplete._classify import Rule, add_rule, classify, remove_rule
from prefect_incomplete._decorator import resumable
from prefect_incomplete.models import IncompleteExecution, Status
from prefect_incomplete.policy import RetryPolicy
from prefect_incomplete.settings import Settings

__all__ = [
    "IncompleteExecution",
    "RetryPolicy",
    "Rule",
    "Settings",
    "Status",
    "add_rule",
    "classify",
    "errors",
    "remove_rule",
    "resumable",
]

__version__ = "0.1.0"
