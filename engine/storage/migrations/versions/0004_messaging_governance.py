"""messaging governance: consents, the caps' delivery ledger, webhook events; suppressions and outbox grow

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 15:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email", "category"),
    )
    op.create_table(
        "email_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key", "address"),
    )
    op.create_index("ix_email_deliveries_address_at", "email_deliveries", ["address", "at"], unique=False)
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # existing rows: no source or detail known, no time recorded
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("detail", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    # existing emails: no category, no extra headers, nobody left out
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("category", sa.String(length=100), server_default="", nullable=False))
        batch_op.add_column(sa.Column("headers", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))
        batch_op.add_column(sa.Column("left_out", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("left_out")
        batch_op.drop_column("headers")
        batch_op.drop_column("category")
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_column("created_at")
        batch_op.drop_column("detail")
        batch_op.drop_column("source")
    op.drop_table("webhook_events")
    op.drop_index("ix_email_deliveries_address_at", table_name="email_deliveries")
    op.drop_table("email_deliveries")
    op.drop_table("consents")
