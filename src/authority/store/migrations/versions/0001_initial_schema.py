"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 19:26:17.091328
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "organizations",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_organizations")),
    )
    op.create_table(
        "principals",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("global_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_principals")),
    )
    op.create_table(
        "memberships",
        sa.Column("organization", sa.String(length=63), nullable=False),
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization"],
            ["organizations.name"],
            name=op.f("fk_memberships_organization_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["principal"],
            ["principals.name"],
            name=op.f("fk_memberships_principal_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization", "principal", name=op.f("pk_memberships")),
    )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_memberships_principal"), ["principal"], unique=False)

    op.create_table(
        "tokens",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_id", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("organization", sa.String(length=63), nullable=True),
        sa.Column("subject", sa.String(length=128), nullable=True),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=160), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization"],
            ["organizations.name"],
            name=op.f("fk_tokens_organization_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["subject"], ["principals.name"], name=op.f("fk_tokens_subject_principals")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_id", name=op.f("uq_tokens_token_id")),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index("ix_tokens_organization_seq", ["organization", "seq"], unique=False)
        batch_op.create_index(
            "ix_tokens_organization_subject_seq", ["organization", "subject", "seq"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_tokens_organization_subject_seq")
        batch_op.drop_index("ix_tokens_organization_seq")

    op.drop_table("tokens")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_memberships_principal"))

    op.drop_table("memberships")
    op.drop_table("principals")
    op.drop_table("organizations")
