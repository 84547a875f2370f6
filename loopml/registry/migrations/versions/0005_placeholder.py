"""serving durability (prediction spool replay, feedback snapshot, retention) — owned by the serving-durability work. No schema change yet; fill upgrade()/downgrade() when one is needed (rename this file freely).

Revision ID: 0005
Revises: 0004
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
