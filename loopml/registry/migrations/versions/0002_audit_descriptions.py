"""Descriptions on models and versions; the alias audit log (who, when, from, to, why).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(sa.Column("description", sa.Text, nullable=False, server_default=""))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("description", sa.Text, nullable=False, server_default=""))
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("to_version", sa.Integer),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_alias_events_name_alias", "alias_events", ["name", "alias", "id"])
    # aliases set before this revision get a synthetic first event so rollback has a history
    op.execute(
        "INSERT INTO alias_events (name, alias, action, from_version, to_version, actor, reason, at) "
        "SELECT name, alias, 'promote', NULL, version, 'migration 0002', 'alias set before the audit log existed', "
        "updated_at FROM aliases"
    )


def downgrade() -> None:
    op.drop_index("ix_alias_events_name_alias", "alias_events")
    op.drop_table("alias_events")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("description")
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("description")
