"""Serving durability: feedback rows carry a snapshot of their prediction (outputs, model version,
and inputs), so feedback never depends on its prediction row — before the row reaches the store
(it may still be in a server's spool) and after prediction-log retention has deleted it.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("prediction_outputs", sa.JSON))
    op.add_column("feedback", sa.Column("model_version", sa.Integer))
    # backfill from the prediction log, so retention may delete any prediction afterwards
    op.execute(
        "UPDATE feedback SET "
        "inputs = COALESCE(inputs, (SELECT p.inputs FROM predictions p WHERE p.id = feedback.prediction_id)), "
        "prediction_outputs = (SELECT p.outputs FROM predictions p WHERE p.id = feedback.prediction_id), "
        "model_version = (SELECT p.model_version FROM predictions p WHERE p.id = feedback.prediction_id) "
        "WHERE prediction_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("model_version")
        batch.drop_column("prediction_outputs")
