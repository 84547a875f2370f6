"""The loop's second turn: an unattended worker's resumable schedule, rollouts (shadow / canary / direct
with a watch period after promotion), the kind of each decision, and shadow predictions marked as never
returned to a client.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loop_state",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("next_cycle_at", sa.Float),
        sa.Column("last_cycle_at", sa.Float),
        sa.Column("cycles", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.JSON),
        sa.Column("updated_at", sa.Float),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("candidate_version", sa.Integer, nullable=False),
        sa.Column("champion_version", sa.Integer),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("percent", sa.Float),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("watch_until", sa.Float),
        sa.Column("numbers", sa.JSON),
    )
    op.create_index("ix_rollouts_model_state", "rollouts", ["model_name", "state"])
    op.add_column("gate_decisions", sa.Column("kind", sa.String(32)))
    op.add_column("predictions", sa.Column("served", sa.Boolean))
    # a shadow prediction names the champion prediction it shadows (same inputs): feedback on that one labels both
    op.add_column("predictions", sa.Column("shadow_of", sa.String(32)))
    op.create_index("ix_predictions_shadow_of", "predictions", ["shadow_of"])


def downgrade() -> None:
    op.drop_index("ix_predictions_shadow_of", "predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("shadow_of")
        batch.drop_column("served")
    with op.batch_alter_table("gate_decisions") as batch:
        batch.drop_column("kind")
    op.drop_index("ix_rollouts_model_state", "rollouts")
    op.drop_table("rollouts")
    op.drop_table("loop_state")
