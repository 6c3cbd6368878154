"""enrolled runs: an account's runs by workflow id, for delivering events without the visibility store

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 03:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolled_runs",
        sa.Column("workflow_id", sa.String(length=500), nullable=False),
        sa.Column("account_id", sa.String(length=200), nullable=False),
        sa.Column("playbook_id", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id"),
    )
    with op.batch_alter_table("enrolled_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_enrolled_runs_account_id"), ["account_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("enrolled_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrolled_runs_account_id"))
    op.drop_table("enrolled_runs")
