"""The ``aesthetic-audit`` command: one subcommand per stage, each a thin call into ``pipeline.Run``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import example_yaml, parse_set
from .errors import AuditError
from .ui import configure, log

DEMO_DIR = "runs/demo"

EPILOG = """
stages, in order:  prompts -> edit | import -> judge -> score -> analyze -> report
  every stage reads and writes RUN (a directory); rerunning a stage computes only what is missing.
exit status:       0 all done; 1 done, but some items failed or a backend could not run
                   (see `aesthetic-audit status RUN`); 2 an error stopped the command.
quick start:       aesthetic-audit demo            (the whole offline audit into runs/demo)
"""


def _common(p: argparse.ArgumentParser, *, run: bool = True, config: bool = True, retry: bool = False) -> None:
    if run:
        p.add_argument("run", metavar="RUN", type=Path, help="run directory (created if missing)")
    if retry:
        p.add_argument("--retry-failed", action="store_true", help="try items recorded as failed again")
    if config:
        p.add_argument("-c", "--config", type=Path, help="YAML config (see `aesthetic-audit init`); "
                       "applied over the run's stored config")
        p.add_argument("--seed", type=int, help="seed for every random choice")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set prompts.n=50 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aesthetic-audit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Measure how far image generators and reward models override explicit "
                    "anti-aesthetic requests (blurry, dark, clashing, empty, rough, unsettling).")
    parser.add_argument("--version", action="version", version=f"aesthetic-audit {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="write a commented example config")
    p.add_argument("path", nargs="?", type=Path, default=Path("aesthetic-audit.yaml"),
                   help="where to write it (default: aesthetic-audit.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = sub.add_parser("prompts", help="captions -> prompt pairs (p_o, p_a, dims)",
                       description="Build wide-spectrum prompt pairs: sample captions, draw 2-4 dimensions "
                                   "per caption, rewrite into an anti-aesthetic prompt p_a. Or import pairs.")
    _common(p, retry=True)
    p.add_argument("--source", help="'builtin', or a COCO captions JSON / CSV / TSV / JSONL / text file")
    p.add_argument("--format", choices=["auto", "coco", "csv", "tsv", "jsonl", "txt"], help="source format")
    p.add_argument("--column", help="caption column in CSV/TSV/JSONL (e.g. Prompt for PartiPrompts)")
    p.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep rows whose column equals the value (repeatable)")
    p.add_argument("-n", "--n", type=int, help="sample this many captions")
    p.add_argument("--dimensions", help="comma-separated dimension keys to draw from")
    p.add_argument("--k-min", type=int, help="fewest dimensions per prompt (default 2)")
    p.add_argument("--k-max", type=int, help="most dimensions per prompt (default 4)")
    p.add_argument("--rewriter", help="'template' (offline) or 'llm' (OpenAI-compatible endpoint)")
    p.add_argument("--import", dest="import_path", type=Path,
                   help="import pairs instead: CSV/TSV/JSONL/Parquet in the study's layout "
                        "(original_prompt, disorted_long_prompt, selected) or the project's (p_o, p_a, dims)")

    p = sub.add_parser("edit", help="photos -> image pairs: I_o the photo, I_a an anti-aesthetic edit",
                       description="Image-editing audit: for each photo draw dimensions the editor can realise, "
                                   "apply pixel transforms at each strength, write p_a naming those effects.")
    _common(p, retry=True)
    p.add_argument("--photos", help="'builtin' or a folder of photos with captions.csv/.jsonl or <stem>.txt")
    p.add_argument("--strengths", help="comma-separated edit strengths in [0, 1]")
    p.add_argument("--dimensions", help="comma-separated dimension keys to edit")

    p = sub.add_parser("import", help="import existing image pairs (folders, CSV/JSONL manifest, HF dataset)")
    _common(p)
    p.add_argument("path", type=Path, help="folder with original/ + distorted/, a manifest, a Parquet file "
                                           "or a dataset saved with save_to_disk")

    p = sub.add_parser("judge", help="per-dimension scores J(I, d) in [0, 2] for every image")
    _common(p, retry=True)
    p.add_argument("--judges", help="comma-separated judge names (see `ls judges`)")

    p = sub.add_parser("score", help="reward-model scores for the four (image, prompt) combinations")
    _common(p, retry=True)
    p.add_argument("--scorers", help="comma-separated scorer names (see `ls scorers`)")
    p.add_argument("--chunk-size", type=int, help="(image, prompt) items per scorer call (default 64)")

    p = sub.add_parser("analyze", help="statistics with bootstrap CIs -> RUN/analysis.json and RUN/tables/")
    _common(p)
    p = sub.add_parser("report", help="self-contained RUN/report.html")
    _common(p)

    p = sub.add_parser("run", help="all stages the config asks for: images, judge, score, analyze, report")
    _common(p)

    p = sub.add_parser("demo", help="the whole offline audit on the built-in captions and photos",
                       description="prompts (built-in captions) -> edit (built-in photos) -> judge -> score "
                                   "-> analyze -> report, offline on CPU. Rerunning computes nothing new.")
    p.add_argument("run", metavar="RUN", type=Path, nargs="?", default=Path(DEMO_DIR),
                   help=f"run directory (default: {DEMO_DIR})")
    _common(p, run=False)

    p = sub.add_parser("status", help="record counts per stage and the failed items")
    p.add_argument("run", metavar="RUN", type=Path)
    p.add_argument("--limit", type=int, default=50, help="failed items to list (default 50)")

    p = sub.add_parser("export", help="export a stage's records to Parquet, CSV or JSONL")
    p.add_argument("run", metavar="RUN", type=Path)
    p.add_argument("--stage", required=True, choices=["prompts", "images", "judge", "score"])
    p.add_argument("-o", "--out", type=Path, required=True, help="output file; format from its suffix")
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], help="override the suffix")
    p.add_argument("--layout", choices=["own", "study"], default="own",
                   help="prompts only: 'study' writes original_prompt, disorted_long_prompt, selected")
    p.add_argument("--ok-only", action="store_true", help="leave failed records out")

    p = sub.add_parser("convert", help="convert a pickle checkpoint to safetensors once",
                       description="Read a pickle checkpoint (.pt/.pth/.bin) with torch.load(weights_only=True) and "
                                   "write its tensors as safetensors, so scorers load it without allow_pickle. "
                                   "With --openclip (HPSv2/HPSv2.1 files), write a transformers CLIP folder "
                                   "(config.json + model.safetensors) instead.")
    p.add_argument("src", type=Path, help="the checkpoint, e.g. ImageReward.pt or HPS_v2.1_compressed.pt")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="output .safetensors file, or a folder (the file is named after the source)")
    p.add_argument("--key", help="entry of the pickle holding the state dict (e.g. state_dict)")
    p.add_argument("--openclip", action="store_true", help="an open_clip checkpoint: write a CLIP folder")
    p.add_argument("--vision-head-width", type=int,
                   help="open_clip only: vision attention head width when the checkpoint's width is not a known one")

    p = sub.add_parser("ls", help="list dimensions, scorers, judges, transforms or rewriters")
    p.add_argument("what", choices=["dimensions", "scorers", "judges", "transforms", "rewriters"])
    p.add_argument("--dimensions-file", type=Path, help="YAML file adding or overriding dimensions")
    return parser


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": getattr(args, "seed", None)}
    cmd = args.command
    if cmd == "import":
        out.update({"images.backend": "import", "images.import_path": str(args.path.resolve())})
    if cmd == "prompts":
        filters = {}
        for f in args.filter:
            if "=" not in f:
                raise AuditError(f"--filter {f!r}: expected COLUMN=VALUE")
            col, val = f.split("=", 1)
            filters[col] = val
        out.update({"prompts.source": args.source, "prompts.format": args.format, "prompts.column": args.column,
                    "prompts.filter": filters or None, "prompts.n": args.n,
                    "prompts.dimensions": _csv(args.dimensions), "prompts.k_min": args.k_min,
                    "prompts.k_max": args.k_max, "prompts.rewriter": args.rewriter})
    elif cmd == "edit":
        out.update({"images.backend": "editor", "images.editor.photos": args.photos,
                    "images.editor.dimensions": _csv(args.dimensions),
                    "images.editor.strengths": [float(s) for s in _csv(args.strengths)] if args.strengths else None})
    elif cmd == "judge":
        out["judge.judges"] = _csv(args.judges)
    elif cmd == "score":
        out.update({"score.scorers": _csv(args.scorers), "score.chunk_size": args.chunk_size})
    out = {k: v for k, v in out.items() if v is not None}  # flags not given change nothing
    out.update(parse_set(getattr(args, "sets", [])))  # an explicit --set key=null does
    return out


def _open(args: argparse.Namespace):
    from .pipeline import Run

    # Reading commands must not create a run for a mistyped path.
    return Run.open(args.run, args.config, _overrides(args), create=args.command not in ("analyze", "report"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(0 if args.quiet else 2 if args.verbose else 1)
    try:
        return _dispatch(args) or 0
    except AuditError as exc:
        log.error("error: %s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume")
        return 130


def _dispatch(args: argparse.Namespace) -> int | None:
    cmd = args.command
    if cmd == "init":
        if args.path.exists() and not args.force:
            raise AuditError(f"{args.path} exists; pass --force to overwrite")
        args.path.write_text(example_yaml(), encoding="utf-8")
        log.info("wrote %s", args.path)
    elif cmd == "ls":
        _ls(args)
    elif cmd == "status":
        _status(args)
    elif cmd == "export":
        _export(args)
    elif cmd == "convert":
        _convert(args)
    elif cmd == "demo":
        run = _open(args)
        run.prompts()
        run.audit()
        log.info("open %s in a browser", run.store.root / "report.html")
        return run.exit_code()
    else:
        run = _open(args)
        if cmd == "prompts":
            run.prompts(retry_failed=args.retry_failed, import_path=args.import_path)
        elif cmd == "edit":
            run.edit(retry_failed=args.retry_failed)
        elif cmd == "import":
            run.import_pairs(args.path)
        elif cmd == "judge":
            run.judge(retry_failed=args.retry_failed)
        elif cmd == "score":
            run.score(retry_failed=args.retry_failed)
        elif cmd == "analyze":
            run.analyze()
        elif cmd == "report":
            run.report()
        elif cmd == "run":
            run.audit()
        return run.exit_code()
    return None


def _ls(args: argparse.Namespace) -> None:
    if args.what == "dimensions":
        from .dimensions import load_catalogue

        for d in load_catalogue(args.dimensions_file):
            tag = "study" if d.study else "extra"
            editor = ", ".join(d.editor) if d.editor else "-"
            print(f"{d.key:22} {d.name:45} [{tag}]  anti: {d.anti}")
            print(f"{'':22} editor: {editor}")
        return
    from .registry import available

    for name, obj in available(args.what).items():
        if args.what == "scorers":
            direction = "higher is better" if obj.higher_is_better else "lower is better"
            blind = "prompt-aware" if obj.prompt_aware else "prompt-blind"
            print(f"{name:16} {direction:17} {blind:13} {obj.description}")
        elif args.what == "transforms":
            print(f"{name:22} {obj.dimension:22} {obj.description}")
        else:
            print(f"{name:16} {getattr(obj, 'description', '')}")


def _status(args: argparse.Namespace) -> None:
    from .store import RunStore

    store = RunStore(args.run, create=False)
    manifest = store.read_manifest()
    print(f"run {store.root}  config {manifest.get('config_hash', '?')[:12]}  updated {manifest.get('updated', '?')}")
    counts = store.counts()
    for stage, c in counts.items():
        print(f"  {stage:8} {c['ok']:6} ok  {c['failed']:5} failed")
    failed = list(store.records(status="failed"))
    if failed:
        print(f"failed items ({len(failed)}):")
        for r in failed[: args.limit]:
            print(f"  [{r.stage}] {r.item}: {r.error}")
        if len(failed) > args.limit:
            print(f"  ... and {len(failed) - args.limit} more (--limit)")


def _convert(args: argparse.Namespace) -> None:
    if args.openclip:
        from .scorers._openclip import convert_checkpoint

        out = convert_checkpoint(args.src, args.out, allow_pickle=True, vision_head_width=args.vision_head_width)
    else:
        from .scorers._weights import convert_to_safetensors

        out = convert_to_safetensors(args.src, args.out, key=args.key)
    log.info("wrote %s", out)


def _export(args: argparse.Namespace) -> None:
    from .store import RunStore
    from .store.export import export_stage

    layout = None
    if args.layout == "study":
        if args.stage != "prompts":
            raise AuditError("--layout study applies to --stage prompts only")
        from .prompts.pairs_io import study_layout

        layout = study_layout
    store = RunStore(args.run, create=False)
    path = export_stage(store, args.stage, args.out, args.format, include_failed=not args.ok_only, layout=layout)
    log.info("wrote %s", path)


if __name__ == "__main__":
    sys.exit(main())
