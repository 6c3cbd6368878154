"""health scores: what events gave the scorecards' measures, the accounts' scores, and their history

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 07:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "health_event_values",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("account_id", sa.String(length=200), nullable=False),
        sa.Column("scorecard_id", sa.String(length=200), nullable=False),
        sa.Column("measure_id", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "scorecard_id", "measure_id"),
    )
    with op.batch_alter_table("health_event_values", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_health_event_values_account_id"), ["account_id"], unique=False)
        batch_op.create_index(
            "ix_health_event_values_window", ["account_id", "scorecard_id", "measure_id", "at"], unique=False
        )
    op.create_table(
        "health_scores",
        sa.Column("account_id", sa.String(length=200), nullable=False),
        sa.Column("scorecard_id", sa.String(length=200), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("band", sa.String(length=100), nullable=True),
        sa.Column("components", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scorecard_version", sa.String(length=100), nullable=False),
        sa.Column("previous_score", sa.Float(), nullable=True),
        sa.Column("previous_band", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("account_id", "scorecard_id"),
    )
    op.create_table(
        "health_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=200), nullable=False),
        sa.Column("scorecard_id", sa.String(length=200), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("band", sa.String(length=100), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("previous_score", sa.Float(), nullable=True),
        sa.Column("previous_band", sa.String(length=100), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("cause", sa.String(length=300), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("health_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_health_history_account", ["account_id", "scorecard_id", "computed_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_health_history_cause"), ["cause"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("health_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_health_history_cause"))
        batch_op.drop_index("ix_health_history_account")
    op.drop_table("health_history")
    op.drop_table("health_scores")
    with op.batch_alter_table("health_event_values", schema=None) as batch_op:
        batch_op.drop_index("ix_health_event_values_window")
        batch_op.drop_index(batch_op.f("ix_health_event_values_account_id"))
    op.drop_table("health_event_values")
