"""run progress: the funnel's projection, one row per run and one per step it finished

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 06:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_progress",
        sa.Column("run_key", sa.String(length=200), nullable=False),
        sa.Column("workflow_id", sa.String(length=500), nullable=False),
        sa.Column("playbook_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.String(length=200), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("paths", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("exit_event", sa.String(length=200), nullable=True),
        sa.Column("current", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_key"),
    )
    with op.batch_alter_table("run_progress", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_progress_workflow_id"), ["workflow_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_progress_account_id"), ["account_id"], unique=False)
        batch_op.create_index("ix_run_progress_playbook", ["playbook_id", "version", "started_at"], unique=False)
    op.create_table(
        "run_step_progress",
        sa.Column("run_key", sa.String(length=200), nullable=False),
        sa.Column("step_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_key"], ["run_progress.run_key"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_key", "step_id"),
    )


def downgrade() -> None:
    op.drop_table("run_step_progress")
    with op.batch_alter_table("run_progress", schema=None) as batch_op:
        batch_op.drop_index("ix_run_progress_playbook")
        batch_op.drop_index(batch_op.f("ix_run_progress_account_id"))
        batch_op.drop_index(batch_op.f("ix_run_progress_workflow_id"))
    op.drop_table("run_progress")
