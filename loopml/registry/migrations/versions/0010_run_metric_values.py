"""Each finished run's final metrics as rows, ``run_metric_values(run_id, key, value)``: the sort key of /runs.

Sorting the runs list by a final metric (``test.accuracy``) used to extract the number from every run's JSON
``metrics`` in SQL (PostgreSQL parses each ``json`` document again: 160+ ms for 10k runs). Here each numeric
leaf of that JSON (dotted key, finite float) is a row, primary key ``(run_id, key)``, with an index on
``(key, value, run_id)``: a page of runs sorted by a metric is a range of that index. ``Store.end_run`` writes the
rows with the metrics; this migration backfills them from the runs already stored (in chunks).

Revision ID: 0010
Revises: 0009
"""

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

KEY_LENGTH = 200
CHUNK = 2000


def metric_rows(run_id: str, metrics: object) -> list[dict]:
    """The numeric leaves of a run's metrics JSON as rows (a frozen copy of the store's rule: keys of at most
    KEY_LENGTH characters, finite numbers, booleans left out)."""
    out: list[dict] = []

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
                and 0 < len(prefix) <= KEY_LENGTH:
            out.append({"run_id": run_id, "key": prefix, "value": float(value)})

    walk(metrics, "")
    return out


def upgrade() -> None:
    table = op.create_table(
        "run_metric_values",
        sa.Column("run_id", sa.String(32), primary_key=True), sa.Column("key", sa.String(KEY_LENGTH), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_run_metric_values_key_value", "run_metric_values", ["key", "value", "run_id"])
    bind = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.String), sa.column("metrics", sa.Text))
    after = ""
    while True:  # keyset pages by id: memory stays flat however many runs there are
        chunk = bind.execute(sa.select(runs.c.id, sa.cast(runs.c.metrics, sa.Text)).where(
            runs.c.id > after, runs.c.metrics.is_not(None)).order_by(runs.c.id).limit(CHUNK)).all()
        if not chunk:
            break
        rows = []
        for run_id, text in chunk:
            try:
                rows += metric_rows(run_id, json.loads(text)) if text else []
            except ValueError:  # a damaged document: that run is not sortable by its metrics, the rest are
                continue
        if rows:
            bind.execute(table.insert(), rows)
        after = chunk[-1][0]


def downgrade() -> None:
    op.drop_index("ix_run_metric_values_key_value", "run_metric_values")
    op.drop_table("run_metric_values")
