"""One label per prediction: a unique index on ``feedback.prediction_id`` (NULL, feedback on bare inputs, may repeat).

A store written before it may hold two labels for one prediction (two labellers, a client retrying). The
newest (highest id) keeps the prediction; the older ones let go of it and stay as feedback on their inputs
(filled in from the prediction where the row had none), as ``add_feedback(corrects=True)`` leaves a
corrected row: a champion that learned one still finds it by id, and a retrain lets the newest label win
for those inputs, as it already did. Nothing is deleted.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# the derived table: MySQL refuses an UPDATE whose subquery reads the table it updates
OLDER = ("feedback.prediction_id IS NOT NULL AND feedback.id NOT IN (SELECT keep_id FROM (SELECT MAX(id) AS keep_id "
         "FROM feedback WHERE prediction_id IS NOT NULL GROUP BY prediction_id) AS newest)")


def upgrade() -> None:
    text = "CHAR" if op.get_bind().dialect.name == "mysql" else "TEXT"
    for column, source in (("inputs", "inputs"), ("prediction_outputs", "outputs"), ("model_version", "model_version")):
        # a JSON column written from None holds JSON null, not SQL NULL
        missing = f"{column} IS NULL" if column == "model_version" else \
            f"({column} IS NULL OR CAST({column} AS {text}) = 'null')"
        op.execute(sa.text(f"UPDATE feedback SET {column} = (SELECT p.{source} FROM predictions p "
                           f"WHERE p.id = feedback.prediction_id) WHERE {missing} AND {OLDER}"))
    op.execute(sa.text(f"UPDATE feedback SET prediction_id = NULL WHERE {OLDER}"))
    op.create_index("ux_feedback_prediction_id", "feedback", ["prediction_id"], unique=True)
    op.drop_index("ix_feedback_prediction_id", "feedback")  # the unique index serves its lookups


def downgrade() -> None:
    op.create_index("ix_feedback_prediction_id", "feedback", ["prediction_id"])
    op.drop_index("ux_feedback_prediction_id", "feedback")
