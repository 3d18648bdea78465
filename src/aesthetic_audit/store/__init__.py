"""The run directory: manifest, record database and content-addressed images."""

from .run import Record, RecordWriter, RunStore

__all__ = ["Record", "RecordWriter", "RunStore"]
