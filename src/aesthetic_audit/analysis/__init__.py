"""Statistics and the audit tables, recomputed from a run's per-item records."""

__all__ = ["RunData", "analyze", "write_tables"]


def __getattr__(name: str):
    # The audit module is loaded on first use: importing a small submodule (stats, by the judge
    # validation that the registry imports with every judge) must not load it.
    if name in __all__:
        from . import audit

        return getattr(audit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
