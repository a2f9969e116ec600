"""Create the tables of incomplete executions and their steps.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``incomplete_executions`` and ``incomplete_steps``."""
    op.create_table(
        "incomplete_executions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("flow_name", sa.String(), nullable=False),
        sa.Column("flow_run_id", sa.String(36), nullable=False),
        sa.Column("deployment_id", sa.String(36), nullable=True),
        sa.Column("entrypoint", sa.Text(), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("resolved_by", sa.String(36), nullable=True),
        sa.Column("last_flow_run_id", sa.String(36), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confidential", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incomplete_executions")),
    )
    op.create_table(
        "incomplete_holds",
        sa.Column("deployment_id", sa.String(36), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("flow_name", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "deployment_id", "reason", name=op.f("pk_incomplete_holds")
        ),
    )
    op.create_index(
        "ix_incomplete_executions_flow_name_status",
        "incomplete_executions",
        ["flow_name", "status"],
    )
    op.create_index(
        "ix_incomplete_executions_status_next_retry_at",
        "incomplete_executions",
        ["status", "next_retry_at"],
    )
    op.create_table(
        "incomplete_steps",
        sa.Column("record_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("task_name", sa.String(), nullable=False),
        sa.Column("task_run_id", sa.String(36), nullable=True),
        sa.Column("kind", sa.String(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("inputs", sa.Text(), nullable=True),
        sa.Column("edited", sa.Text(), nullable=True),
        sa.Column("inputs_fingerprint", sa.String(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('failed', 'completed')", name=op.f("ck_incomplete_steps_state")
        ),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["incomplete_executions.id"],
            name=op.f("fk_incomplete_steps_record_id_incomplete_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "record_id", "state", "key", name=op.f("pk_incomplete_steps")
        ),
    )


def downgrade() -> None:
    """Drop the tables, and with them every stored record."""
    op.drop_table("incomplete_holds")
    op.drop_table("incomplete_steps")
    op.drop_index(
        "ix_incomplete_executions_status_next_retry_at",
        table_name="incomplete_executions",
    )
    op.drop_index(
        "ix_incomplete_executions_flow_name_status",
        table_name="incomplete_executions",
    )
    op.drop_table("incomplete_executions")
