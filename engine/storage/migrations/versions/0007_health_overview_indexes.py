"""health: indexes for the ops page's health overview (counts per band, lowest scores, recent band changes); the
event values' index on account_id alone dropped (the window index starts with it: one B-tree less per event value)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("health_event_values", schema=None) as batch_op:
        batch_op.drop_index("ix_health_event_values_account_id")
    with op.batch_alter_table("health_scores", schema=None) as batch_op:
        batch_op.create_index("ix_health_scores_band", ["scorecard_id", "band"], unique=False)
    with op.batch_alter_table("health_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_health_history_band_changes", ["scorecard_id", "computed_at", "band", "previous_band"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("health_event_values", schema=None) as batch_op:
        batch_op.create_index("ix_health_event_values_account_id", ["account_id"], unique=False)
    with op.batch_alter_table("health_history", schema=None) as batch_op:
        batch_op.drop_index("ix_health_history_band_changes")
    with op.batch_alter_table("health_scores", schema=None) as batch_op:
        batch_op.drop_index("ix_health_scores_band")
