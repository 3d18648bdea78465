"""The Python API behind the CLI: open a run, resolve its config, run stages.

    from aesthetic_audit.pipeline import Run
    run = Run.open("runs/demo", overrides={"prompts.n": 50})
    run.prompts(); run.edit(); run.judge(); run.score(); run.analyze(); run.report()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import AuditConfig, GenerateConfig, load_config
from .dimensions import Catalogue, load_catalogue, load_visionreward_rubric
from .errors import AuditError, ConfigError, EngineError, InputError
from .records import BACKEND, IMAGES, PROMPTS, backend_key
from .stage import StageSummary
from .store import Record, RunStore
from .store.manifest import record_stage
from .ui import log, log_to_run


class Run:
    def __init__(self, store: RunStore, config: AuditConfig):
        self.store, self.config = store, config
        self._catalogue: Catalogue | None = None
        self.errors: list[str] = []  # backends that could not run; the others went on
        self.summaries: list[StageSummary] = []
        self._engine = None

    @classmethod
    def open(cls, run_dir: str | Path, config_file: str | Path | None = None,
             overrides: dict[str, Any] | None = None, *, create: bool = True) -> "Run":
        """Open (or create) a run. Its stored config is the base; a config file and overrides go on top."""
        stored = None
        if not Path(run_dir).exists():
            # Validate first: a bad config file or flag must not leave an empty run directory behind.
            config = load_config(config_file, overrides)
            store = RunStore(run_dir, create=create)
        else:
            store = RunStore(run_dir, create=create)
            stored = store.read_manifest().get("config")
            config = load_config(config_file, overrides, base=stored)
        if config.images.png_level is None:
            # Automatic: the level the run already uses (6 for a run made before the setting), 1 for a new
            # run; the manifest records it with the next stage, so the run keeps it.
            from .images.decode import run_png_level

            empty = stored is None and not store.counts().get(IMAGES)
            config.images.png_level = run_png_level(None, stored, empty=empty)
        log_to_run(store.root)
        return cls(store, config)

    @property
    def engine(self):
        """Where generate, judge, labels and score run their models (``engine`` in the config); made on
        first use, so commands that run none of them never start Ray."""
        if self._engine is None:
            from .engine import make_engine

            self._engine = make_engine(self.config)
        return self._engine

    def close(self) -> None:
        """Stop what the run started (a local Ray); the store stays usable."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

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
        return 1 if self.errors or any(s.failed or s.lost for s in self.summaries) else 0

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

    def generate(self, *, retry_failed: bool = False) -> list[StageSummary]:
        """Render the run's prompt pairs with each generator of ``images.generate.generators``; one that
        cannot run (missing weights or extra) is reported, recorded and skipped. A dead API endpoint stops
        the stage (what was rendered stays stored)."""
        from .clients.openai_compat import EndpointUnreachable
        from .images.generate import run_generate
        from .images.generators.presets import generator_specs, known_names

        gc = self.config.images.generate
        specs = generator_specs(gc)
        if not specs:
            raise ConfigError(f"generate: no generator given; pass --generator NAME (repeatable) or set "
                              f"images.generate.generators; {known_names()}")
        if not self._has_inputs(gc):
            return []
        # Built before any runs, so a bad option value stops the command before anything is rendered
        # (building loads nothing); an engine that cannot run (the ray extra missing) stops it too.
        built = [(spec, spec.build()) for spec in specs]
        log.debug("engine: %s", self.engine.name)
        out = []
        held = []  # generators run on weights that the next one shares (a LoRA scale sweep on one pipeline)
        try:
            for i, (spec, generator) in enumerate(built):
                try:
                    out.append(self._done(run_generate(self.store, self.config, spec, generator=generator,
                                                       retry_failed=retry_failed, engine=self.engine,
                                                       factory=spec.build)))
                    self._backend_ran("generator", spec.name)
                except (EndpointUnreachable, EngineError):
                    raise
                except AuditError as exc:
                    self._backend_failed("generator", spec.name, exc)
                    out.append(StageSummary(f"images:{spec.name}", warnings=[str(exc)]))
                held.append(generator)
                # Unload before the next loads: ten presets' weights never fit in memory at once.
                if i + 1 == len(built) or not generator.shares_weights(built[i + 1][1]):
                    while held:
                        held.pop().unload()
        finally:
            while held:
                held.pop().unload()
        return out

    def _has_inputs(self, gc: GenerateConfig) -> bool:
        """Whether there is anything to render; if not, say what to run first (exit status 1)."""
        from .images.generate import prompt_records, source_pairs

        run = self.store.root
        if gc.img2img.enabled and gc.img2img.of == "pairs":
            if source_pairs(self.store):
                return True
            why = (f"img2img of the run's pairs needs image pairs: make them with `aesthetic-audit edit {run}` "
                   f"or `aesthetic-audit import {run} PATH`")
        elif prompt_records(self.store, gc.origins):
            return True
        else:
            why = (f"the run has no prompt pairs of origin {', '.join(gc.origins)}: start with "
                   f"`aesthetic-audit prompts {run}` (or `prompts {run} --import FILE`)")
        msg = f"generate: nothing to do; {why}"
        log.error("%s", msg)
        self.errors.append(msg)
        return False

    def import_pairs(self, path: str | Path, *, allow_outside: bool | None = None) -> StageSummary:
        """``allow_outside`` (default: the config's ``images.allow_outside``) lets image paths lead outside
        the folder of the manifest that names them."""
        from .images.importers import import_pairs
        from .ui import progress

        if allow_outside is None:
            allow_outside = self.config.images.allow_outside
        record_stage(self.store, self.config, "images", {"images": {"name": "import", "path": str(path)}})
        result = import_pairs(path, self.store, allow_outside=allow_outside, model=self.config.images.import_model,
                              progress=lambda rows, total: progress(rows, total=total, desc="import", unit="pair"),
                              dimensions=self.catalogue.keys())
        return self._done(StageSummary("images", total=result.ok + result.failed + result.skipped_existing,
                                       new=result.ok, cached=result.skipped_existing, failed=result.failed,
                                       warnings=list(result.warnings),
                                       retry_hint="fix the rows `status RUN` lists and import again"))

    def _has_pairs(self, what: str) -> bool:
        """Whether the run holds image pairs; if not, say what to run next and count it as not done
        (exit status 1) instead of writing an empty result."""
        counts = self.store.counts()
        if counts.get(IMAGES, {}).get("ok"):
            return True
        failed = counts.get(IMAGES, {}).get("failed", 0)
        prompts = counts.get(PROMPTS, {}).get("ok", 0)
        run = self.store.root
        if failed:
            why = f"all {failed} image pairs failed (`aesthetic-audit status {run}` says why)"
        elif prompts:
            why = (f"the run has {prompts} prompt pairs but no image pairs yet: render them with "
                   f"`aesthetic-audit generate {run} --generator NAME` (`ls generators` lists them), edit "
                   f"photos with `aesthetic-audit edit {run}` or bring your own with `aesthetic-audit import {run} "
                   f"PATH`")
        else:
            why = (f"the run has no image pairs: start with `aesthetic-audit prompts {run}`, then "
                   f"`generate`, `edit` or `import`, or run `aesthetic-audit demo`")
        msg = f"{what}: nothing to do; {why}"
        log.error("%s", msg)
        self.errors.append(msg)
        return False

    def _backend_failed(self, kind: str, name: str, exc: Exception) -> None:
        """A backend that could not run at all is a failed record too, so `status` lists it; it is
        removed once the backend runs."""
        log.error("error: %s %s: %s", kind, name, exc)
        self.errors.append(f"{kind} {name}: {exc}")
        self.store.put(Record.failed(backend_key(kind, name), BACKEND, f"{kind} {name}", str(exc)))

    def _backend_ran(self, kind: str, name: str) -> None:
        self.store.discard_failed([backend_key(kind, name)])

    @property
    def rubric_options(self) -> dict[str, list[dict]] | None:
        """The guideline file's option rows per dimension (the study's judge prompt lists them), if any."""
        if not self.config.rubric_file:
            return None
        return {k: v["options"] for k, v in load_visionreward_rubric(self.config.rubric_file).items()}

    def _each_backend(self, kind: str, stage: str, names: list[str], build, run, *,
                      config_errors_stop: bool = True) -> list[StageSummary]:
        """Build every named backend first (``build(name)``): a bad option or an unreadable file the
        config names stops the command before anything runs or is stored (unless ``config_errors_stop``
        is false: scorers' options are checked with the config, so a bad one here comes from an older
        run's config and only that scorer is skipped). Then run each in turn
        (``run(name, backend)``): one that cannot run (missing weights or extra) is reported, recorded and
        skipped; an endpoint that is down is recorded and stops the command. Each is unloaded after its
        stage."""
        from .clients.openai_compat import EndpointUnreachable

        log.debug("engine: %s", self.engine.name)  # made first: one that cannot run (no ray extra) stops here
        built = []
        for name in names:
            try:
                built.append((name, build(name)))
            except (ConfigError, InputError) as exc:
                if config_errors_stop:
                    raise ConfigError(f"{kind} {name}: {exc}") from None
                built.append((name, exc))
            except AuditError as exc:
                built.append((name, exc))
        out = []
        for name, backend in built:
            try:
                if isinstance(backend, AuditError):
                    raise backend
                out.append(self._done(run(name, backend)))
                self._backend_ran(kind, name)
            except EndpointUnreachable as exc:
                # recorded for `status`, said once by the command's error line
                self.store.put(Record.failed(backend_key(kind, name), BACKEND, f"{kind} {name}", str(exc)))
                raise EndpointUnreachable(f"{kind} {name}: {exc}") from None
            except EngineError:
                raise  # no fault of the backend: nothing is recorded against it
            except AuditError as exc:
                self._backend_failed(kind, name, exc)
                out.append(StageSummary(f"{stage}:{name}", warnings=[str(exc)]))
            finally:
                if not isinstance(backend, AuditError) and hasattr(backend, "unload"):
                    backend.unload()
        return out

    def judge(self, names: list[str] | None = None, *, retry_failed: bool = False) -> list[StageSummary]:
        """Judge with each judge; one that cannot run (or whose endpoint is down) is reported, recorded
        and skipped."""
        from functools import partial

        from .judges.stage import make_prepared_judge, run_judge

        if not self._has_pairs("judge"):
            return []

        def factory(name: str):
            return partial(make_prepared_judge, name, self.config.judge.options.get(name), self.catalogue,
                           self.rubric_options)

        def run(name: str, judge) -> StageSummary:
            record_stage(self.store, self.config, f"judge:{name}", {f"judge:{name}": judge.identity()})
            return run_judge(self.store, judge, self.catalogue, retry_failed=retry_failed,
                             batch_size=self.config.judge.batch_size, name=name, engine=self.engine,
                             factory=factory(name))

        return self._each_backend("judge", "judge", names or self.config.judge.judges,
                                  lambda name: factory(name)(), run)

    def labels(self, names: list[str] | None = None, *, retry_failed: bool = False,
               import_path: str | Path | None = None) -> list[StageSummary]:
        """Label every pair with each VLM labeller, or import human labels from ``import_path``."""
        from functools import partial

        from .labels.stage import make_labeller, run_labels

        if not self._has_pairs("labels"):
            return []
        if import_path is not None:
            from .labels.humans import import_human_labels

            record_stage(self.store, self.config, "labels", {"labels:import": {"file": str(import_path)}})
            summary = import_human_labels(self.store, import_path)
            for warning in summary.warnings:
                log.warning("%s", warning)
            return [self._done(summary)]
        names = names or self.config.labels.labellers
        if not names:
            msg = ("labels: no labeller given; pass --labellers vlm with labels.options.vlm naming a model folder "
                   "or an endpoint (see the README), or --import FILE for human labels")
            log.error("%s", msg)
            self.errors.append(msg)
            return []

        def run(name: str, labeller) -> StageSummary:
            record_stage(self.store, self.config, f"labels:{name}", {f"labeller:{name}": labeller.identity()})
            return run_labels(self.store, labeller, seed=self.config.seed, name=name,
                              batch_size=self.config.labels.batch_size, retry_failed=retry_failed,
                              engine=self.engine, factory=factory(name))

        def factory(name: str):
            return partial(make_labeller, name, self.config.labels.options.get(name))

        return self._each_backend("labeller", "labels", names, lambda name: factory(name)(), run)

    def score(self, names: list[str] | None = None, *, retry_failed: bool = False) -> list[StageSummary]:
        """Score with each scorer; one whose dependencies are missing is reported and skipped."""
        from functools import partial

        from .scorers.stage import make_scorer, run_score

        if not self._has_pairs("score"):
            return []

        def run(name: str, scorer) -> StageSummary:
            backend = {"identity": scorer.identity()}
            if hasattr(scorer, "weights_manifest"):
                backend["files"] = scorer.weights_manifest()
            record_stage(self.store, self.config, f"score:{name}", {f"scorer:{name}": backend})
            return run_score(self.store, scorer, chunk_size=self.config.score.chunk_size, retry_failed=retry_failed,
                             engine=self.engine, factory=factory(name))

        def factory(name: str):
            return partial(make_scorer, name, self.config.score.options.get(name))

        from .images.shared import sharing

        with sharing():  # each image decoded once for all the scorers
            return self._each_backend("scorer", "score", names or self.config.score.scorers,
                                      lambda name: factory(name)(), run, config_errors_stop=False)

    def analyze(self) -> dict | None:
        """The analysis (also in RUN/analysis.json and RUN/tables/), or None when the run has no pairs.

        Files written from exactly the same records, settings and software are reused as they are
        (``analysis.reuse`` says what counts): a rerun of a finished run does not redo the bootstrap."""
        from .analysis import reuse

        if not self._has_pairs("analyze"):
            return None
        path = self.store.root / "analysis.json"
        records = reuse.records_digest(self.store)
        if reuse.reusable(self.store, "analysis", reuse.inputs_digest(self.store, self.config, records)):
            result = json.loads(path.read_text(encoding="utf-8"))
            record_stage(self.store, self.config, "analyze")
        else:
            from .analysis.audit import analyze, write_tables
            from .store.run import atomic_write_text

            result = analyze(self.store, self.config.analysis, seed=self.config.seed)
            atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
            tables = write_tables(result, self.store.root / "tables")
            # The analysis settings it ran with become the run's (flags persist, as for every stage), so
            # a later `report` analyses the same way and its methods section shows them.
            record_stage(self.store, self.config, "analyze")
            # Remembered with the manifest this command leaves (the state in which the next command will
            # look for them) and the records as they were before the analysis read them.
            reuse.remember(self.store, "analysis", reuse.inputs_digest(self.store, self.config, records),
                           [path, *tables])
        log.info("analysis: %s", path)
        return result

    def report(self, analysis: dict | None = None) -> Path | None:
        """Write RUN/report.html; None when the run has no pairs to report on. A report made from the
        same analysis, records, manifest and software is kept as it is (``analysis.reuse``)."""
        from .analysis import reuse
        from .hashing import spec_hash

        if analysis is None:  # always from the records as they are now, never a stale analysis.json
            analysis = self.analyze()
        if analysis is None:
            return None
        out = self.store.root / "report.html"
        digest = reuse.inputs_digest(self.store, self.config, reuse.records_digest(self.store),
                                     run=self.store.root.name, analysis=spec_hash(analysis))
        if not reuse.reusable(self.store, "report", digest):
            from .report.html import write_report

            out = write_report(self.store, analysis, out)
            reuse.remember(self.store, "report", digest, [out])
        log.info("report: %s", out)
        return out

    def audit(self) -> Path | None:
        """Every stage the config asks for, in order; each skips what is already done."""
        if self.config.images.backend == "import":
            if not self.config.images.import_path:
                raise AuditError("images.backend is 'import' but images.import_path is not set")
            self.import_pairs(self.config.images.import_path)
        elif self.config.images.backend == "generate":
            from .images.generate import prompt_records
            from .images.generators.presets import generator_specs

            gc = self.config.images.generate
            # A fresh run starts from the prompt stage, whose pairs have origin "captions"; img2img of the
            # run's pairs renders no prompt pairs, and a run rendering other origins only has them already.
            if not (gc.img2img.enabled and gc.img2img.of == "pairs") and "captions" in gc.origins \
                    and not prompt_records(self.store, gc.origins):
                generator_specs(gc)  # an unknown generator stops the run before the prompts are written
                self.prompts()
            if not self.generate():
                return None  # generate said what is missing
        else:
            self.edit()
        if not self._has_pairs("run"):
            return None
        from .images.shared import sharing

        with sharing():  # the judge, the labellers and every scorer decode each image once between them
            self.judge()
            if self.config.labels.labellers:
                self.labels()
            self.score()
        return self.report(self.analyze())
