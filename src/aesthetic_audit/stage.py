"""What every stage returns: counts of new, cached and failed items, and counted warnings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageSummary:
    stage: str
    total: int = 0
    new: int = 0
    cached: int = 0
    failed: int = 0
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.stage}: {self.total} items", f"{self.new} new", f"{self.cached} cached",
                 f"{self.failed} failed"]
        if self.warnings:
            parts.append(f"{len(self.warnings)} warnings")
        return ", ".join(parts)
