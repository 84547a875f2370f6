"""Indexes the web dashboard's pages need (issue 14): every list is paged in SQL and sorted by an index.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # runs: newest first, overall and filtered by status or by experiment (/runs). The id (the tie-breaker
    # of the order) is in each: the order is the index's, and a deep OFFSET skips index entries, not rows
    op.create_index("ix_runs_started", "runs", ["started_at", "id"])
    op.create_index("ix_runs_status_started", "runs", ["status", "started_at", "id"])
    op.create_index("ix_runs_experiment_started", "runs", ["experiment", "started_at", "id"])
    # a run's learning curves, key by key in step order (/runs/{id}, /runs/compare)
    op.create_index("ix_run_metrics_run_key_step", "run_metrics", ["run_id", "key", "step"])
    # the versions registered from a run (/runs/{id})
    op.create_index("ix_model_versions_run", "model_versions", ["run_id"])
    # a model's alias audit log, newest first (/models/{name}); the 0002 index leads with the alias
    op.create_index("ix_alias_events_name_id", "alias_events", ["name", "id"])
    # decisions newest first, filtered by kind and / or outcome (/decisions); by model: 0004's (model_name, id).
    # Rows older than 0007 have no kind: they were retrain decisions, so say so and the index serves them too
    op.execute("UPDATE gate_decisions SET kind = 'retrain' WHERE kind IS NULL")
    op.create_index("ix_gate_decisions_kind_id", "gate_decisions", ["kind", "id"])
    op.create_index("ix_gate_decisions_promoted_id", "gate_decisions", ["promoted", "id"])
    # two or three filters together: the count and the page read these alone (no row lookups)
    op.create_index("ix_gate_decisions_model_kind_promoted", "gate_decisions", ["model_name", "kind", "promoted", "id"])
    op.create_index("ix_gate_decisions_kind_promoted", "gate_decisions", ["kind", "promoted", "id"])
    # predictions of the last 24 h over every model, counted on the overview (/): an index range, not a scan
    op.create_index("ix_predictions_created", "predictions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_gate_decisions_kind_promoted", "gate_decisions")
    op.drop_index("ix_gate_decisions_model_kind_promoted", "gate_decisions")
    op.drop_index("ix_gate_decisions_promoted_id", "gate_decisions")
    op.drop_index("ix_gate_decisions_kind_id", "gate_decisions")
    op.drop_index("ix_alias_events_name_id", "alias_events")
    op.drop_index("ix_predictions_created", "predictions")
    op.drop_index("ix_model_versions_run", "model_versions")
    op.drop_index("ix_run_metrics_run_key_step", "run_metrics")
    op.drop_index("ix_runs_experiment_started", "runs")
    op.drop_index("ix_runs_status_started", "runs")
    op.drop_index("ix_runs_started", "runs")
