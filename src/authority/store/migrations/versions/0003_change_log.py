"""the change log (events): audit trail, WatchEvents and cache invalidation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("organization", sa.String(length=63), nullable=True),
        sa.Column("subject", sa.String(length=160), nullable=False),
        sa.Column("token_id", sa.String(length=16), nullable=True),
        sa.Column("actor_principal", sa.String(length=128), nullable=True),
        sa.Column("actor_token_id", sa.String(length=16), nullable=True),
        sa.Column("peer", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
    )
    op.create_index("ix_events_organization_seq", "events", ["organization", "seq"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])


def downgrade() -> None:
    op.drop_table("events")
