"""health: an event value's one index is its unique key, led by the account (account, scorecard, measure, event):
the window index and the event-led unique key go. An event's values were written into three B-trees (the table,
the window index, the unique key: a random page of its own); now two, on the account's own pages. The window reads
take the account's rows of a measure by the new key and keep those in the window (the night prunes the rest).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:30:00
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NEW_KEY = "uq_health_event_values_account_event"
NEW_COLUMNS = ["account_id", "scorecard_id", "measure_id", "event_id"]
OLD_COLUMNS = ["event_id", "scorecard_id", "measure_id"]
# 0006 left the old key unnamed: PostgreSQL named it itself; on SQLite batch mode names what it reflects by this
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}
OLD_KEY_SQLITE = "uq_health_event_values_event_id_scorecard_id_measure_id"
OLD_KEY_POSTGRESQL = "health_event_values_event_id_scorecard_id_measure_id_key"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("health_event_values", naming_convention=SQLITE_NAMES if sqlite else None) as batch_op:
        batch_op.drop_constraint(OLD_KEY_SQLITE if sqlite else OLD_KEY_POSTGRESQL, type_="unique")
        batch_op.drop_index("ix_health_event_values_window")
        batch_op.create_unique_constraint(NEW_KEY, NEW_COLUMNS)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("health_event_values", naming_convention=SQLITE_NAMES if sqlite else None) as batch_op:
        batch_op.drop_constraint(NEW_KEY, type_="unique")
        batch_op.create_index(
            "ix_health_event_values_window", ["account_id", "scorecard_id", "measure_id", "at"], unique=False
        )
        batch_op.create_unique_constraint(OLD_KEY_SQLITE if sqlite else OLD_KEY_POSTGRESQL, OLD_COLUMNS)
