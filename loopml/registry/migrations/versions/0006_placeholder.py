"""the loop: per-model locks, compare-and-set promotion — owned by the retrain/gate work. No schema change yet; fill upgrade()/downgrade() when one is needed (rename this file freely).

Revision ID: 0006
Revises: 0005
"""

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
