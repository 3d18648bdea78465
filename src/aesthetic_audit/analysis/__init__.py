"""Statistics and the audit tables, recomputed from a run's per-item records."""

from .audit import RunData, analyze, write_tables

__all__ = ["RunData", "analyze", "write_tables"]
