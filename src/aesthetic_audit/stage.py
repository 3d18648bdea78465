"""What every stage returns: counts of new, cached and failed items, and counted warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class StageSummary:
    stage: str
    total: int = 0
    new: int = 0
    cached: int = 0
    failed: int = 0
    warnings: list[str] = field(default_factory=list)
    # What the summary line suggests after failures; stages without --retry-failed say what works for them.
    retry_hint: str = "rerun with --retry-failed to try them again (`status RUN` lists them)"

    def pending(self, keys: Iterable[str], store, retry_failed: bool = False) -> set[str]:
        """Which keys still need computing; counts the others as cached (ok) or failed (stored failed,
        skipped unless ``retry_failed``)."""
        ok, failed = store.keys(self.stage.split(":")[0], "ok"), store.keys(self.stage.split(":")[0], "failed")
        todo = set()
        for key in keys:
            if key in ok:
                self.cached += 1
            elif key in failed and not retry_failed:
                self.failed += 1
            else:
                todo.add(key)
        return todo

    def line(self) -> str:
        parts = [f"{self.stage}: {self.total} items", f"{self.new} new", f"{self.cached} cached",
                 f"{self.failed} failed"]
        if self.warnings:
            parts.append(f"{len(self.warnings)} warnings")
        line = ", ".join(parts)
        return f"{line}; {self.retry_hint}" if self.failed and self.retry_hint else line
