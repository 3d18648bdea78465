"""The Python API behind the CLI: open a run, resolve its config, run stages.

    from aesthetic_audit.pipeline import Run
    run = Run.open("runs/demo", overrides={"prompts.n": 50})
    run.prompts(); run.edit(); run.judge(); run.score(); run.analyze(); run.report()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import AuditConfig, load_config
from .dimensions import Catalogue, load_catalogue, load_visionreward_rubric
from .errors import AuditError
from .stage import StageSummary
from .store import RunStore
from .store.manifest import record_stage
from .ui import log, log_to_run, progress_counter


class Run:
    def __init__(self, store: RunStore, config: AuditConfig):
        self.store, self.config = store, config
        self._catalogue: Catalogue | None = None
        self.errors: list[str] = []  # backends that could not run; the others went on
        self.summaries: list[StageSummary] = []

    @classmethod
    def open(cls, run_dir: str | Path, config_file: str | Path | None = None,
             overrides: dict[str, Any] | None = None, *, create: bool = True) -> "Run":
        """Open (or create) a run. Its stored config is the base; a config file and overrides go on top."""
        store = RunStore(run_dir, create=create)
        base = store.read_manifest().get("config")
        config = load_config(config_file, overrides, base=base)
        log_to_run(store.root)
        return cls(store, config)

    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            cat = load_catalogue(self.config.dimensions_file)
            if self.config.rubric_file:
                cat = cat.with_rubrics({k: v["rubric"] for k, v in
                                        load_visionreward_rubric(self.config.rubric_file).items()})
            self._catalogue = cat
        return self._catalogue

    def _done(self, summary: StageSummary) -> StageSummary:
        log.info(summary.line())
        self.summaries.append(summary)
        return summary

    def exit_code(self) -> int:
        """1 when any item failed or a backend could not run in this session's stages, else 0."""
        return 1 if self.errors or any(s.failed for s in self.summaries) else 0

    def prompts(self, *, retry_failed: bool = False, import_path: str | Path | None = None) -> StageSummary:
        from .prompts.pairs_io import import_prompt_pairs
        from .prompts.stage import make_rewriter, run_prompts

        if import_path is not None:
            record_stage(self.store, self.config, "prompts", {"rewriter": {"name": "import", "file": str(import_path)}})
            return self._done(import_prompt_pairs(self.store, import_path, self.catalogue))
        rewriter = make_rewriter(self.config)
        record_stage(self.store, self.config, "prompts", {"rewriter": rewriter.identity()})
        return self._done(run_prompts(self.store, self.config, self.catalogue, rewriter=rewriter,
                                      retry_failed=retry_failed))

    def edit(self, *, retry_failed: bool = False) -> StageSummary:
        from .images.stage import run_edit

        record_stage(self.store, self.config, "images", {"images": {"name": "editor"}})
        return self._done(run_edit(self.store, self.config, self.catalogue, retry_failed=retry_failed))

    def import_pairs(self, path: str | Path) -> StageSummary:
        from .images.importers import import_pairs

        record_stage(self.store, self.config, "images", {"images": {"name": "import", "path": str(path)}})
        with progress_counter(desc="import") as bar:
            result = import_pairs(path, self.store, progress=bar)
        return self._done(StageSummary("images", total=result.ok + result.failed + result.skipped_existing,
                                       new=result.ok, cached=result.skipped_existing, failed=result.failed))

    def judge(self, names: list[str] | None = None, *, retry_failed: bool = False) -> list[StageSummary]:
        from .judges.stage import make_judge, run_judge

        judges = [make_judge(n) for n in (names or self.config.judge.judges)]
        record_stage(self.store, self.config, "judge", {"judges": {j.name: j.identity() for j in judges}})
        return [self._done(run_judge(self.store, j, self.catalogue, retry_failed=retry_failed))
                for j in judges]

    def score(self, names: list[str] | None = None, *, retry_failed: bool = False) -> list[StageSummary]:
        """Score with each scorer; one whose dependencies are missing is reported and skipped."""
        from .scorers.stage import make_scorer, run_score

        opts = self.config.score.options
        out = []
        for name in names or self.config.score.scorers:
            try:
                s = make_scorer(name, opts.get(name))
                backend = {"identity": s.identity()}
                if hasattr(s, "weights_manifest"):
                    backend["files"] = s.weights_manifest()
                record_stage(self.store, self.config, f"score:{name}", {f"scorer:{name}": backend})
                out.append(self._done(run_score(self.store, s, chunk_size=self.config.score.chunk_size,
                                                retry_failed=retry_failed)))
            except AuditError as exc:
                log.error("error: scorer %s: %s", name, exc)
                self.errors.append(f"scorer {name}: {exc}")
                out.append(StageSummary(f"score:{name}", warnings=[str(exc)]))
        return out

    def analyze(self) -> dict:
        from .analysis.audit import analyze, write_tables

        result = analyze(self.store, self.config.analysis, seed=self.config.seed)
        path = self.store.root / "analysis.json"
        path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        write_tables(result, self.store.root / "tables")
        log.info("analysis: %s", path)
        return result

    def report(self, analysis: dict | None = None) -> Path:
        from .report.html import write_report

        if analysis is None:  # always from the records as they are now, never a stale analysis.json
            analysis = self.analyze()
        out = write_report(self.store, analysis, self.store.root / "report.html")
        log.info("report: %s", out)
        return out

    def audit(self) -> Path:
        """Every stage the config asks for, in order; each skips what is already done."""
        if self.config.images.backend == "import":
            if not self.config.images.import_path:
                raise AuditError("images.backend is 'import' but images.import_path is not set")
            self.import_pairs(self.config.images.import_path)
        else:
            self.edit()
        self.judge()
        self.score()
        return self.report(self.analyze())
