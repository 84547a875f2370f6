"""monitoring and runs — owned by the monitor/performance work. No schema change yet; fill upgrade()/downgrade() when one is needed (rename this file freely).

Revision ID: 0007
Revises: 0006
"""

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
