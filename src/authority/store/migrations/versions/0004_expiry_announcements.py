"""expiry announcements: which tokens' expiry (and coming expiry) the change log has told

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tokens", sa.Column("expiry_announced_at", sa.DateTime(timezone=True)))
    op.add_column("tokens", sa.Column("expiring_announced_at", sa.DateTime(timezone=True)))
    # Tokens that expired before this revision are old news: not announced now, all at once.
    op.execute(
        sa.text(
            "UPDATE tokens SET expiry_announced_at = expires_at, expiring_announced_at = expires_at"
            " WHERE expires_at IS NOT NULL AND expires_at <= CURRENT_TIMESTAMP"
        )
    )
    # The sweep reads only the tokens still to announce: partial indexes keep it from walking
    # every token that ever expired.
    expired = sa.text("expires_at IS NOT NULL AND expiry_announced_at IS NULL")
    expiring = sa.text("expires_at IS NOT NULL AND expiring_announced_at IS NULL")
    op.create_index(
        "ix_tokens_expiry_announced_pending",
        "tokens",
        ["expires_at"],
        postgresql_where=expired,
        sqlite_where=expired,
    )
    op.create_index(
        "ix_tokens_expiring_announced_pending",
        "tokens",
        ["expires_at"],
        postgresql_where=expiring,
        sqlite_where=expiring,
    )


def downgrade() -> None:
    op.drop_index("ix_tokens_expiring_announced_pending", "tokens")
    op.drop_index("ix_tokens_expiry_announced_pending", "tokens")
    op.drop_column("tokens", "expiring_announced_at")
    op.drop_column("tokens", "expiry_announced_at")
