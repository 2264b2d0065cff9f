"""the audit trail's filters: who acted and what it was about, each beside the sequence order

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_actor_principal_seq", "events", ["actor_principal", "seq"])
    op.create_index("ix_events_subject_seq", "events", ["subject", "seq"])


def downgrade() -> None:
    op.drop_index("ix_events_subject_seq", table_name="events")
    op.drop_index("ix_events_actor_principal_seq", table_name="events")
