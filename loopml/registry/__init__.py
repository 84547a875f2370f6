"""Tracking and the model registry: runs, versions, aliases and their audit log (SQLAlchemy + Alembic)."""

from loopml.registry.store import REF, Store, flatten

__all__ = ["REF", "Store", "flatten"]
