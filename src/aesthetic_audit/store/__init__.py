"""The run directory: manifest, record database and content-addressed images."""

from .run import Record, RunStore

__all__ = ["Record", "RunStore"]
