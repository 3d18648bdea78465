"""The ``aesthetic-audit`` command: one subcommand per stage, each a thin call into ``pipeline.Run``."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any

from . import __version__
from .config import example_yaml, parse_set
from .errors import AuditError
from .ui import configure, log

DEMO_DIR = "runs/demo"
CREATING = ("prompts", "edit", "import", "run", "demo")  # commands that create a missing run directory

EPILOG = """
stages, in order:  prompts -> generate | edit | import -> judge -> labels -> score -> analyze -> report
  every stage reads and writes RUN (a directory); rerunning a stage computes only what is missing.
exit status:       0 all done; 1 done, but some items failed or a backend could not run
                   (see `aesthetic-audit status RUN`); 2 an error stopped the command.
quick start:       aesthetic-audit demo            (the whole offline audit into runs/demo)
"""


def _common(p: argparse.ArgumentParser, *, run: bool = True, config: bool = True, retry: bool = False,
            engine: bool = False) -> None:
    if run:
        creates = p.prog.split()[-1] in CREATING
        p.add_argument("run", metavar="RUN", type=Path,
                       help="run directory (created if missing)" if creates else "an existing run directory")
    if retry:
        p.add_argument("--retry-failed", action="store_true", help="try items recorded as failed again")
    if engine:
        p.add_argument("--engine", choices=["local", "ray"],
                       help="run the models in this process (local, the default) or in actor pools on Ray: a "
                            "cluster named by RAY_ADDRESS or ray.address, else a Ray started on this machine; "
                            "the ray section sizes the pools (see the README's 'Scaling out')")
    if config:
        p.add_argument("-c", "--config", type=Path, help="YAML config (see `aesthetic-audit init`)"
                       + ("; applied over the run's stored config" if run else ""))
        p.add_argument("--seed", type=_seed, help="seed for every random choice (an integer >= 0)")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set prompts.n=50 (repeatable); quote a part "
                            "that holds a dot: --set 'score.options.\"hpsv2.1\".device=cuda'")


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"{seed} is negative; seeds are integers >= 0")
    return seed


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected comma-separated numbers, e.g. 0.35,0.7,1") from None


def _verbosity_flags() -> argparse.ArgumentParser:
    """-q/-v, accepted before or after the subcommand (SUPPRESS: not given here, the top level's value stays)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="only warnings and errors; no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug messages too")
    return parent


def _names(kind: str) -> str:
    from .registry import available

    return ", ".join(available(kind))


def build_parser() -> argparse.ArgumentParser:
    from .config import AuditConfig

    defaults = AuditConfig()
    parser = argparse.ArgumentParser(
        prog="aesthetic-audit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Measure how far image generators and reward models override explicit "
                    "anti-aesthetic requests (blurry, dark, clashing, empty, rough, unsettling).")
    parser.add_argument("--version", action="version", version=f"aesthetic-audit {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    flags = _verbosity_flags()

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        # Lines are wrapped here, so descriptions may carry their own layout (the import layouts).
        text = "\n".join(textwrap.fill(line, 100, subsequent_indent=" " * (len(line) - len(line.lstrip())))
                         for line in description.splitlines())
        return sub.add_parser(name, help=help, description=text, parents=[flags],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("init", "write a commented example config",
                "Write a commented example config: every key with its default and what it does.")
    p.add_argument("path", nargs="?", type=Path, default=Path("aesthetic-audit.yaml"),
                   help="where to write it (default: aesthetic-audit.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = command("prompts", "captions -> prompt pairs (p_o, p_a, dims)",
                "Build wide-spectrum prompt pairs: sample captions, draw 2-4 dimensions per caption, rewrite "
                "into an anti-aesthetic prompt p_a. Or import pairs.")
    _common(p, retry=True)
    p.add_argument("--source", help="'builtin', or a COCO captions JSON / CSV / TSV / JSONL / text file")
    p.add_argument("--format", choices=["auto", "coco", "csv", "tsv", "jsonl", "txt"], help="source format")
    p.add_argument("--column", help="caption column in CSV/TSV/JSONL (e.g. Prompt for PartiPrompts)")
    p.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep rows whose column equals the value (repeatable)")
    p.add_argument("-n", "--n", type=int, help=f"sample this many captions (default {defaults.prompts.n})")
    p.add_argument("--dimensions", help="comma-separated dimension keys to draw from (default: the study's 11; "
                                        "see `ls dimensions`)")
    p.add_argument("--k-min", type=int, help="fewest dimensions per prompt (default 2)")
    p.add_argument("--k-max", type=int, help="most dimensions per prompt (default 4)")
    p.add_argument("--rewriter", help=f"one of: {_names('rewriters')} (default {defaults.prompts.rewriter})")
    p.add_argument("--import", dest="import_path", type=Path,
                   help="import pairs instead: CSV/TSV/JSONL/Parquet in the study's layout "
                        "(original_prompt, disorted_long_prompt, selected) or the project's (p_o, p_a, dims)")

    p = command("edit", "photos -> image pairs: I_o the photo, I_a an anti-aesthetic edit",
                "Image-editing audit: for each photo draw dimensions the editor can realise, apply pixel "
                "transforms at each strength, write p_a naming those effects.")
    _common(p, retry=True)
    p.add_argument("--photos", help="'builtin' or a folder of photos with captions.csv/.jsonl or <stem>.txt")
    p.add_argument("--strengths", type=_floats, help="comma-separated edit strengths in [0, 1] (default "
                   + ",".join(str(v) for v in defaults.images.editor.strengths) + ")")
    p.add_argument("--dimensions", help="comma-separated dimension keys to edit (default: all the editor "
                                        "can realise; see `ls dimensions`)")

    p = command("generate", "prompt pairs -> image pairs: I_o from p_o, I_a from p_a, per generator",
                "Render each prompt pair of the run with each generator: I_o from p_o, I_a from p_a, one image "
                "pair per (prompt pair, generator), its model the generator's name. Seeds derive from --seed, "
                "the prompt pair and the side (both sides share one unless images.generate.paired_seeds is "
                "false). Batches halve on out-of-memory; failed items are recorded with their reason; a "
                "rerun renders only what is missing.\n"
                "Settings live under images.generate: options.NAME (device, dtype, batch_size, model for a "
                "local folder, revision, params/sides for call parameters), sweep (lora_scale: the "
                "alignment-strength dial; negative: the 'conventional beauty' negative prompt), img2img "
                "(enabled, strength, of: generated | pairs), origins (which prompt pairs).\n"
                "Hub weights need a pinned commit (options.NAME.revision, transformer_revision, lora_revision) "
                "or HF_HUB_OFFLINE=1 with the model in the Hugging Face cache; presets pin none.\n"
                f"presets (`aesthetic-audit ls generators` shows their settings):\n{_preset_lines()}\n"
                f"backends: {_names('generators')}")
    p.add_argument("run", metavar="RUN", type=Path,
                   help="an existing run directory holding prompt pairs (from `prompts`); generate creates none")
    _common(p, run=False, retry=True, engine=True)
    p.add_argument("--generator", dest="generators", action="append", metavar="NAME",
                   help="a preset or backend name (repeatable); replaces images.generate.generators")

    p = command("import", "import existing image pairs (folders, CSV/JSONL manifest, HF dataset)",
                "Import image pairs that exist already. Layouts, detected from PATH:\n"
                "  folder    PATH/original/ + PATH/distorted/ (or I_o/ + I_a/) with matching file stems, and\n"
                "            PATH/prompts.csv or prompts.jsonl with columns file, p_o, p_a [, dims, model, label]\n"
                "  manifest  a .csv/.jsonl file with image_o, image_a (paths relative to it), p_o, p_a\n"
                "            [, dims, model, label]\n"
                "  hf        the study's benchmark schema as Parquet (a file or folder) or a dataset saved\n"
                "            with save_to_disk (image_original, image_distorted, prompt_original, ...)\n"
                "  generated a folder of images named <pair_id>_o.<ext> and <pair_id>_a.<ext> (what\n"
                "            `export --layout generate` asks for)\n"
                "A pair_id column (or file name) links a pair to the run's prompt pair: p_o, p_a and dims come\n"
                "from it when the row has none; a pair_id the run does not hold fails its row. The generator\n"
                "name comes from a model column, else --model.\n"
                "Bad rows become failed records and the import goes on. Image paths outside the manifest's\n"
                "folder are refused unless --allow-outside is given.")
    _common(p)
    p.add_argument("path", type=Path, help="folder with original/ + distorted/, a manifest, a Parquet file "
                                           "or a dataset saved with save_to_disk")
    p.add_argument("--allow-outside", action="store_true",
                   help="read image paths that lead outside the manifest's folder (absolute paths, ../)")
    p.add_argument("--model", help="generator name for rows without a model column (images.import_model)")

    p = command("judge", "per-dimension scores J(I, d) in [0, 2] for every image",
                "Judge every image of the run's pairs on every dimension: J(I, d) in [0, 2] "
                "(0 anti-aesthetic, 1 neutral, 2 conventional). Prompt-independent.\n"
                f"judges: {_names('judges')} (default: {', '.join(defaults.judge.judges)})")
    _common(p, retry=True, engine=True)
    p.add_argument("--judges", help="comma-separated judge names (see `ls judges`); NAME:ALIAS runs another "
                                    "instance with options judge.options.NAME:ALIAS")

    p = command("labels", "which image of each pair better matches p_a: VLM labellers or human labels",
                "Label every pair of the run with each pairwise labeller: a VLM sees p_a and both images (in a "
                "recorded, seeded order) and answers first / second / tie; the label is 1 (I_a preferred), "
                "0 (I_o) or -1 (tie). A labeller needs a model: labels.options.vlm.model (a local Qwen-VL "
                "folder) or labels.options.vlm.url + model (an OpenAI-compatible endpoint); both_orders: true "
                "asks in both orders and counts disagreements as ties.\n"
                "--import FILE reads human labels instead: Label Studio's JSON export of tasks made with "
                "`export --layout label-studio`, or CSV/TSV/JSONL with rater, image_pair_id and choice.")
    _common(p, retry=True, engine=True)
    p.add_argument("--labellers", help="comma-separated labeller names (vlm, or vlm:ALIAS)")
    p.add_argument("--import", dest="import_path", type=Path, metavar="FILE", help="import human labels")

    p = command("annotate", "a local web app in which people label pairs, with live agreement statistics",
                "Serve a small annotation app for the run's image pairs (needs the 'app' extra). Prints one "
                "link per rater, each with a secret token, and one link to the agreement page (humans vs "
                "each labeller, Krippendorff's alpha across raters, flags for possibly upsetting pairs). "
                "A rater sees p_a and two images in a shuffled, recorded order and answers first / second / "
                "tie (keys 1 / 2 / 0), with undo (u); answers are labels records with source human:<rater>. "
                "The study (pairs, tokens, orders, flags) is kept in RUN/annotate/setup.json (mode 0600): "
                "run the command again to resume it; --rater or --raters adds raters. Ctrl-C stops.")
    _common(p, config=False)
    p.add_argument("--pairs", type=int, help="label this many pairs, a seeded sample (default: all; the study "
                                             "used 40); the same pairs for every rater")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--raters", dest="n_raters", type=int, metavar="K", help="K raters named rater1..raterK")
    who.add_argument("--rater", dest="rater_names", action="append", metavar="NAME",
                     help="a rater by name (repeatable)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only); any other prints a warning")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--show-flagged", action="store_true",
                   help="show pairs flagged as possibly upsetting to raters too")
    p.add_argument("--seed", type=_seed, help="seed of the pair sample, orders and sides (default: the stored "
                                              "study's, else 0)")

    p = command("validate-judge", "check a judge against VisionReward-style human annotations",
                "Compare per-image judge outputs with raw VisionReward annotations per dimension (target class "
                "= sign(raw) + 1): MAE, class-balanced MAE, support-weighted F1 of the rounded expected score "
                "and of the argmax, accuracy; overall and per dimension, with n and bootstrap CIs (resampling "
                "images).\n"
                "PRED alone: the study's rater-evaluation file ({\"pred\": [...], \"gt\": [...]}). PRED and GT: "
                "predictions (image, dimension, score[, pred]) and annotations (image, dimension, raw) as "
                "JSON/JSONL/CSV, long or wide (see the README). With --images DIR, PRED is not read: the judge "
                "given by --judge judges every image in DIR first and GT is the annotations file.")
    _common(p, run=False)
    p.add_argument("pred", type=Path, metavar="PRED_OR_GT", help="predictions (or, with --images, the annotations)")
    p.add_argument("gt", type=Path, nargs="?", metavar="GT", help="annotations, when PRED holds predictions only")
    p.add_argument("--images", type=Path, help="a folder of images to judge first (file stem = image id)")
    p.add_argument("--judge", default="classical", help="with --images: the judge to run (options from "
                                                        "judge.options.NAME; default classical)")
    p.add_argument("--dims", help="comma-separated dimensions to validate (default: all present on both sides)")
    p.add_argument("--rounding", choices=["half-up", "half-even"], default="half-up",
                   help="how E[J] is rounded to a class for F1 (half-even is numpy's rounding, which the study's "
                        "notebook used; default half-up)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--format", dest="fmt", choices=["table", "json"], default="table")
    p.add_argument("-o", "--out", type=Path, help="also write the JSON result here")

    p = command("score", "reward-model scores for the four (image, prompt) combinations",
                "Score r(I, p) for the four combinations of every pair (I_o/I_a x p_o/p_a) with each scorer.\n"
                f"scorers: {_names('scorers')}\n"
                f"default: {', '.join(defaults.score.scorers)}; model scorers take options in the config "
                "(score.options.NAME: device, dtype, batch_size, weights, ...).")
    _common(p, retry=True, engine=True)
    p.add_argument("--scorers", help="comma-separated scorer names (see `ls scorers`)")
    p.add_argument("--chunk-size", type=int, help=f"(image, prompt) items per scorer call "
                                                  f"(default {defaults.score.chunk_size})")

    p = command("analyze", "statistics with bootstrap CIs -> RUN/analysis.json and RUN/tables/",
                "Recompute every statistic from the records: shares, deltas, per dimension and strength, "
                "judge deltas, reward-model tests, with bootstrap CIs and n. Writes RUN/analysis.json and "
                "RUN/tables/ (CSV, Markdown, LaTeX).")
    _common(p)
    p = command("report", "self-contained RUN/report.html (or several runs side by side)",
                "Analyse the records as they are now and write RUN/report.html: one self-contained file "
                "(summary, charts, tables, a gallery of every pair, methods) to send around. With more runs, "
                "write one file (-o) with a table of every scorer's share per run and each run's report.")
    _common(p)
    p.add_argument("more", nargs="*", type=Path, metavar="RUN", help="more runs to show side by side")
    p.add_argument("-o", "--out", type=Path, help="where to write the report (default RUN/report.html; "
                                                  "required with several runs)")

    p = command("run", "all stages the config asks for: images, judge, score, analyze, report",
                "Run every stage the config asks for, in order: images (images.backend: generate, edit or "
                "import; generate runs the prompt stage first when the run has no prompt pairs), judge, score, "
                "analyze, report. Each stage skips what is already done.")
    _common(p, engine=True)

    p = command("demo", "the whole offline audit on the built-in captions and photos",
                "prompts (built-in captions) -> edit (built-in photos) -> judge -> score -> analyze -> report, "
                "offline on CPU. Rerunning computes nothing new.")
    p.add_argument("run", metavar="RUN", type=Path, nargs="?", default=Path(DEMO_DIR),
                   help=f"run directory (default: {DEMO_DIR})")
    _common(p, run=False)

    p = command("status", "the run's config, record counts per stage and the failed items",
                "Show the run's stored config (the one every later command starts from), record counts per "
                "stage, backends that could not run, and every failed item with its reason. Reads only.")
    p.add_argument("run", metavar="RUN", type=Path)
    p.add_argument("--limit", type=int, default=50, help="failed items to list (default 50)")

    p = command("export", "export a stage's records to Parquet, CSV or JSONL",
                "Export a stage's records (the database is the truth; exports are derived). CSV cells that "
                "a spreadsheet would run as formulas are escaped. Reads only.")
    p.add_argument("run", metavar="RUN", type=Path)
    p.add_argument("--stage", choices=["prompts", "images", "judge", "labels", "score"],
                   help="the stage whose records to export (not needed with --layout label-studio)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file; format from its suffix (a folder "
                                                                   "for --layout label-studio)")
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], help="override the suffix")
    p.add_argument("--layout", choices=["own", "study", "generate", "label-studio"], default="own",
                   help="'study' and 'generate' are for --stage prompts: 'study' writes original_prompt, "
                        "disorted_long_prompt, selected; 'generate' writes pair_id, p_o, p_a, dims, file_o, file_a (the "
                        "file names to give the images you render elsewhere; import them back with `import`). "
                        "'label-studio' (no --stage) writes pair-labelling tasks and a labeling config into the "
                        "folder -o names; import the answers with `labels RUN --import`")
    p.add_argument("--template", default="{pair_id}_{side}.png",
                   help="--layout generate: file name template with {pair_id}, {side} (o or a) and {index} "
                        "(the row's position, e.g. {index:04d}); default {pair_id}_{side}.png, which `import` "
                        "of a folder recognises (other names import through the exported manifest)")
    p.add_argument("--ok-only", action="store_true", help="leave failed records out")
    p.add_argument("--images", dest="ls_images", choices=["embed", "path", "url"], default="embed",
                   help="--layout label-studio: images as data URLs (embed, default), file paths served by "
                        "Label Studio's local-files storage (path), or --url-prefix + file name (url)")
    p.add_argument("--url-prefix", help="--layout label-studio --images url: where the run's images are served")
    p.add_argument("--pairs", type=int, help="--layout label-studio: at most this many pairs (a seeded sample)")
    p.add_argument("--document-root", type=Path, help="--layout label-studio --images path: Label Studio's "
                   "LOCAL_FILES_DOCUMENT_ROOT (default: the run directory)")
    p.add_argument("--model", dest="models", action="append", metavar="NAME",
                   help="--layout label-studio: only pairs of this generator (repeatable)")
    p.add_argument("--origin", choices=["captions", "editor", "import"],
                   help="prompts only: keep the prompt pairs of one origin (the prompt stage's captions, the "
                        "editor's photos, or an import); every layout has an origin column")

    p = command("extra-tests", "the study's emotion test and real-art placement (no run needed)",
                "The study's two tests outside the image-pair audit. Each prints a table (or --format json) "
                "and writes nothing to a run.\n"
                "  emotion   images of one scene differing only in the emotion expressed: per scorer and "
                "emotion e,\n"
                "            the strict share of scenes with s(I_e, p_e) > s(I_ref, p_e), ties, n, bootstrap "
                "CI over\n"
                "            scenes and Wilson interval\n"
                "  real-art  real artworks' scores: z against one generator's images in a run, a one-sided\n"
                "            Mann-Whitney U test (H1: artworks score worse) with effect size, and placement on\n"
                "            a leaderboard")
    extra = p.add_subparsers(dest="extra_test", metavar="TEST", required=True)
    e = extra.add_parser("emotion", parents=[flags], help="does a scorer prefer the reference emotion?",
                         description="MANIFEST: a CSV/JSONL file with columns scene, emotion, image (a path relative "
                                     "to the manifest, inside its folder) and prompt (naming that emotion; the "
                                     "reference row's may be empty). For every scene and emotion e other than "
                                     "--reference, compare s(I_e, p_e) with s(I_ref, p_e), s oriented so that "
                                     "higher is better. Scorer options: score.options.NAME (--set, -c).")
    e.add_argument("manifest", type=Path, metavar="MANIFEST")
    e.add_argument("--scorers", required=True, help="comma-separated scorer names (see `ls scorers`)")
    e.add_argument("--reference", default="neutral", help="the emotion every other is compared with "
                                                          "(default neutral)")
    e.add_argument("--emotions", help="comma-separated emotions to test (default: all but the reference)")
    r = extra.add_parser("real-art", parents=[flags], help="real artworks against AI images and a leaderboard",
                         description="ARTWORKS: a folder of images, or a CSV/JSONL manifest with column image "
                                     "(relative to it) and optional prompt and title. With --run and "
                                     "--generator, the reference is that generator's r(I_o, p_o) (or with "
                                     "--side a, r(I_a, p_a)) from the run's scores by the same scorer and "
                                     "options: z-scores (sd with ddof 1) and a one-sided Mann-Whitney U test "
                                     "(H1: artworks score worse) with rank-biserial effect size. With "
                                     "--leaderboard (CSV/JSONL with name, score): raw r, relative s = "
                                     "(r - r_min)/(r_max - r_min) and rank R (1 = best) per artwork.")
    r.add_argument("artworks", type=Path, metavar="ARTWORKS")
    r.add_argument("--scorer", required=True, help="a scorer name (see `ls scorers`)")
    r.add_argument("--prompt", help="prompt for artworks without one (needed by prompt-aware scorers)")
    r.add_argument("--run", dest="ref_run", type=Path, metavar="RUN", help="a run holding the AI images' scores")
    r.add_argument("--generator", metavar="NAME",
                   help="with --run: the generator (the pairs' model) whose images are the reference")
    r.add_argument("--side", choices=["o", "a"], default="o",
                   help="with --run: I_o under p_o (default) or I_a under p_a")
    r.add_argument("--leaderboard", type=Path, metavar="TABLE", help="a CSV/JSONL table with columns name, score")
    for q in (e, r):
        _common(q, run=False)
        q.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
        q.add_argument("--format", dest="fmt", choices=["table", "json"], default="table")
        q.add_argument("-o", "--out", type=Path, help="also write the JSON result here")

    p = command("convert", "convert a pickle checkpoint to safetensors once",
                "Read a pickle checkpoint (.pt/.pth/.bin) with torch.load(weights_only=True) and write its "
                "tensors as safetensors, so scorers load it without allow_pickle. With --openclip "
                "(HPSv2/HPSv2.1 files), write a transformers CLIP folder (config.json + model.safetensors) "
                "instead. With --mps (MPS_overall_checkpoint.pth, a pickled whole model), write config.json + "
                "model.safetensors, reading the pickle with inert stand-ins for its classes.")
    p.add_argument("src", type=Path, help="the checkpoint, e.g. ImageReward.pt or HPS_v2.1_compressed.pt")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="output .safetensors file, or a folder (the file is named after the source)")
    p.add_argument("--key", help="entry of the pickle holding the state dict (e.g. state_dict)")
    p.add_argument("--openclip", action="store_true", help="an open_clip checkpoint: write a CLIP folder")
    p.add_argument("--vision-head-width", type=int,
                   help="open_clip only: vision attention head width when the checkpoint's width is not a known one")
    p.add_argument("--activation", choices=["gelu", "quick_gelu"], default="gelu",
                   help="open_clip only: the MLP activation; quick_gelu for checkpoints fine-tuned from OpenAI CLIP "
                        "(HPS v1 hpc.pt)")
    p.add_argument("--mps", action="store_true", help="the official MPS checkpoint: write an MPS folder")

    p = command("ls", "list dimensions, scorers, judges, labellers, transforms, rewriters or generators",
                "List what is available: the dimension catalogue, or the registered backends of a kind "
                "(built-in and from installed plugins); for generators also the presets and their settings.")
    p.add_argument("what", choices=["dimensions", "scorers", "judges", "labellers", "transforms", "rewriters",
                                    "generators"])
    p.add_argument("--dimensions-file", type=Path, help="YAML file adding or overriding dimensions")
    p.add_argument("--markdown", action="store_true",
                   help="scorers only: the reward-model table (official source, score scale, parity) as Markdown")

    from .intent.base import PARSERS

    p = command("intent", "which dimensions prompts request: parse one prompt, or measure a parser on a run",
                "Intent parsing, as the intent-aware reward reads prompts. With RUN: parse the run's prompt pairs "
                "(p_a requests its dims, p_o nothing) and print, per rewriter, precision, recall, F1 and n per "
                "dimension, the macro-F1 over the dimensions with support, micro-F1, and the false-positive rate "
                "on prompts that request nothing. With --prompt: print one prompt's parse (requested dimensions "
                "with their strength, negated ones, and the words that led there). Reads only.\n"
                "parsers: lexicon (offline, the default: cue words derived from the dimension catalogue), "
                "embedding (a sentence-embedding model: --option model=FOLDER [--option threshold=0.5]), llm (an "
                "OpenAI-compatible endpoint: --option base_url=URL --option model=NAME).")
    p.add_argument("run", metavar="RUN", type=Path, nargs="?", help="an existing run directory with prompt pairs")
    p.add_argument("--prompt", help="parse this prompt instead of a run's pairs")
    p.add_argument("--parser", default="lexicon", choices=list(PARSERS), help="the intent parser (default lexicon)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a parser option, value read as YAML (repeatable), e.g. --option threshold=0.5")
    p.add_argument("--dimensions-file", type=Path, help="YAML file adding or overriding dimensions (default: the "
                                                        "run's dimensions_file, if any)")
    p.add_argument("--format", dest="fmt", choices=["table", "json"], default="table")
    return parser


def _preset_lines() -> str:
    from .images.generators.presets import presets

    def weights(o: dict) -> str:  # kept under the help's 100 columns
        extra = f" + {o['transformer']}" if o.get("transformer") else f" + LoRA {o['lora']}" if o.get("lora") else ""
        return f"{str(o.get('model', '')).rsplit('/', 1)[-1]}{extra}"

    return "\n".join(f"  {p.name:25} {weights(p.options)}" for p in presets().values())


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": getattr(args, "seed", None)}
    cmd = args.command
    if cmd == "import":
        out.update({"images.backend": "import", "images.import_path": str(args.path.resolve()),
                    "images.allow_outside": args.allow_outside, "images.import_model": args.model})
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
                    "images.editor.strengths": args.strengths})
    elif cmd == "generate":
        out.update({"images.backend": "generate", "images.generate.generators": args.generators})
    elif cmd == "judge":
        out["judge.judges"] = _csv(args.judges)
    elif cmd == "labels":
        out["labels.labellers"] = _csv(args.labellers)
    elif cmd == "score":
        out.update({"score.scorers": _csv(args.scorers), "score.chunk_size": args.chunk_size})
    out["engine"] = getattr(args, "engine", None)
    out = {k: v for k, v in out.items() if v is not None}  # flags not given change nothing
    out.update(parse_set(getattr(args, "sets", [])))  # an explicit --set key=null does
    return out


def _open(args: argparse.Namespace):
    from .pipeline import Run

    # Reading commands must not create a run for a mistyped path (nor generate: it needs the run's prompts).
    return Run.open(args.run, args.config, _overrides(args), create=args.command in CREATING)


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
    except BrokenPipeError:
        # `aesthetic-audit status RUN | head`: the reader left; stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk, a folder we may not write, a file that vanished
        where = f" {exc.filename}" if exc.filename else ""
        log.error("error: cannot read or write%s: %s", where, exc.strerror or exc)
        log.debug("details", exc_info=True)
        return 2
    except sqlite3.Error as exc:  # "database or disk is full", "attempt to write a readonly database"
        log.error("error: run database (records.sqlite): %s", exc)
        log.debug("details", exc_info=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        log.error("error: unexpected %s: %s (rerun with -v for details; please report it)", type(exc).__name__, exc)
        log.debug("details", exc_info=True)
        return 2


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
    elif cmd == "validate-judge":
        return _validate_judge(args)
    elif cmd == "extra-tests":
        return _extra_tests(args)
    elif cmd == "intent":
        _intent(args)
    elif cmd == "annotate":
        _annotate(args)
    else:
        run = _open(args)
        try:
            return _run_command(run, args)
        finally:
            run.close()  # stops a Ray the run started
    return None


def _run_command(run, args: argparse.Namespace) -> int:
    """A command on one run."""
    cmd = args.command
    if cmd == "demo":
        run.prompts()
        run.audit()
        log.info("open %s in a browser", run.store.root / "report.html")
    elif cmd == "prompts":
        run.prompts(retry_failed=args.retry_failed, import_path=args.import_path)
    elif cmd == "edit":
        run.edit(retry_failed=args.retry_failed)
    elif cmd == "generate":
        run.generate(retry_failed=args.retry_failed)
    elif cmd == "import":
        run.import_pairs(args.path)
    elif cmd == "judge":
        run.judge(retry_failed=args.retry_failed)
    elif cmd == "labels":
        run.labels(retry_failed=args.retry_failed, import_path=args.import_path)
    elif cmd == "score":
        run.score(retry_failed=args.retry_failed)
    elif cmd == "analyze":
        run.analyze()
    elif cmd == "report":
        if args.more or args.out:
            _report_several(run, args)
        else:
            run.report()
    elif cmd == "run":
        run.audit()
    return run.exit_code()


def _ls(args: argparse.Namespace) -> None:
    if args.what == "dimensions":
        from .dimensions import load_catalogue

        for d in load_catalogue(args.dimensions_file):
            tag = "study" if d.study else "extra"
            editor = ", ".join(d.editor) if d.editor else "-"
            print(f"{d.key:22} {d.name:45} [{tag}]  anti: {d.anti}")
            print(f"{'':22} editor: {editor}")
        return
    if args.what == "generators":
        _ls_generators()
        return
    from .registry import available

    if args.markdown:
        if args.what != "scorers":
            raise AuditError("--markdown prints the reward-model table: use it with `ls scorers`")
        print(scorer_table(available("scorers")))
        return
    for name, obj in available(args.what).items():
        if args.what == "scorers":
            direction = "pairwise" if getattr(obj, "pairwise", False) else \
                "higher is better" if obj.higher_is_better else "lower is better"
            blind = "prompt-aware" if obj.prompt_aware else "prompt-blind"
            print(f"{name:16} {direction:17} {blind:13} {obj.description}")
            for label, key in (("official", "official"), ("scale", "score_scale"), ("parity", "parity")):
                text = getattr(obj, key, "")  # a plugin's class may not say
                if text:
                    print(textwrap.fill(f"{label}: {text}", 120, initial_indent=" " * 17,
                                        subsequent_indent=" " * 19))
        elif args.what == "transforms":
            print(f"{name:22} {obj.dimension:22} {obj.description}")
        else:
            print(f"{name:16} {getattr(obj, 'description', '')}")


def scorer_table(scorers: dict[str, Any]) -> str:
    """The README's reward-model table, from the scorer classes themselves (a test keeps the README equal)."""
    rows = ["| scorer | official source | score scale | parity (how measured) |", "|---|---|---|---|"]
    for name, obj in scorers.items():
        cells = [f"`{name}`"] + [getattr(obj, k, "") or "-" for k in ("official", "score_scale", "parity")]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def _ls_generators() -> None:
    from .images.generators.presets import describe_params, presets
    from .registry import available

    print("presets (aesthetic-audit generate RUN --generator NAME):")
    for p in presets().values():
        opts = p.options
        weights = opts.get("model", "-") + (f" @ {opts['revision']}" if opts.get("revision") else
                                            " (revision not pinned)" if "revision" in opts else "")
        print(f"{p.name:26} {p.backend:14} {weights}")
        extras = [f"{k} {v}" for k, v in opts.items() if k not in ("model", "revision", "lora", "lora_scale")
                  and v is not None]
        if opts.get("lora"):
            extras.append(f"lora {opts['lora']} scale {opts.get('lora_scale', 1.0):g}")
        if extras:
            print(f"{'':26} {'; '.join(extras)}")
        if p.asymmetric:
            print(f"{'':26} p_o side: {describe_params(p.side('o'))}")
            print(f"{'':26} p_a side: {describe_params(p.side('a'))}  (differs from p_o: see the note)")
        else:
            print(f"{'':26} both sides: {describe_params(p.side('o'))}")
        if p.with_negative:
            print(f"{'':26} with the negative-prompt mitigation: {describe_params(p.with_negative)}")
        print(textwrap.fill(p.description, 100, initial_indent=" " * 27, subsequent_indent=" " * 27))
    print("backends:")
    for name, obj in available("generators").items():
        print(f"{name:26} {getattr(obj, 'description', '')}")


def _status(args: argparse.Namespace) -> None:
    from .records import BACKEND
    from .store import RunStore

    store = RunStore(args.run, create=False, readonly=True)
    manifest = store.read_manifest()
    print(f"run {store.root}  config {manifest.get('config_hash', '?')[:12]}  updated {manifest.get('updated', '?')}")
    config = manifest.get("config")
    if config:
        # The stored config is where every later command starts: flags given to earlier commands persist.
        images = config.get("images", {})
        print(f"  config   seed {config.get('seed')}; images {images.get('backend')}"
              + (f" ({images.get('import_path')})" if images.get("backend") == "import" else "")
              + (f" ({', '.join(images.get('generate', {}).get('generators', []))})"
                 if images.get("backend") == "generate" else "")
              + f"; judges {', '.join(config.get('judge', {}).get('judges', []))}"
              + (f"; labellers {', '.join(config['labels']['labellers'])}"
                 if (config.get("labels") or {}).get("labellers") else "")
              + f"; scorers {', '.join(config.get('score', {}).get('scorers', []))}")
    counts = store.counts()
    for stage, c in counts.items():
        if stage != BACKEND:
            print(f"  {stage:8} {c['ok']:6} ok  {c['failed']:5} failed")
    backends = list(store.records(BACKEND, status="failed"))
    if backends:
        print(f"backends that could not run ({len(backends)}):")
        for r in backends:
            print(f"  {r.item}: {r.error}")
    failed = [r for r in store.records(status="failed") if r.stage != BACKEND]
    if failed:
        print(f"failed items ({len(failed)}):")
        for r in failed[: args.limit]:
            print(f"  [{r.stage}] {r.item}: {r.error}")
        if len(failed) > args.limit:
            print(f"  ... and {len(failed) - args.limit} more (--limit)")
    if failed or backends:
        stage = failed[0].stage if failed else "score"
        command = stage if stage in ("prompts", "judge", "labels", "score") else "generate"  # images: edit/generate
        print(f"retry failed items with --retry-failed on the stage's command, e.g. "
              f"`aesthetic-audit {command} {store.root} --retry-failed`; failed rows of an import: fix them and "
              f"import again")


def _report_several(first, args: argparse.Namespace) -> None:
    """``report RUN -o FILE`` or ``report RUN RUN ... -o FILE``."""
    from .pipeline import Run
    from .report.html import write_comparison

    if args.out is None:
        raise AuditError("report of several runs: give the output file with -o, e.g. -o compare.html")
    runs = [first] + [Run.open(path, create=False) for path in args.more]
    analyses = [run.analyze() for run in runs]
    empty = [str(run.store.root) for run, a in zip(runs, analyses) if a is None]
    if empty:
        raise AuditError(f"report: {', '.join(empty)} has no image pairs to report on")
    if len(runs) == 1:
        from .report.html import write_report

        out = write_report(first.store, analyses[0], args.out)
    else:
        out = write_comparison([(run.store, a) for run, a in zip(runs, analyses)], args.out)
    log.info("report: %s", out)


def _intent(args: argparse.Namespace) -> None:
    """``intent RUN``: the parser measured on the run's prompt pairs; ``intent --prompt TEXT``: one parse."""
    import yaml

    from .intent import evaluate as ev
    from .intent.base import make_parser

    if (args.run is None) == (args.prompt is None):
        raise AuditError("intent: give a RUN to measure the parser on, or --prompt TEXT to parse (one of them)")
    options: dict[str, Any] = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AuditError(f"--option {item!r}: expected KEY=VALUE, e.g. threshold=0.5")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise AuditError(f"--option {item!r}: cannot read the value: {str(exc).splitlines()[0]}") from None
    dimensions_file = args.dimensions_file
    store = None
    if args.run is not None:
        from .store import RunStore

        store = RunStore(args.run, create=False, readonly=True)
        if dimensions_file is None:
            dimensions_file = (store.read_manifest().get("config") or {}).get("dimensions_file")
    if dimensions_file is not None:
        options.setdefault("dimensions_file", str(dimensions_file))
    parser = make_parser(args.parser, options)
    if store is None:
        [intent] = parser.parse([args.prompt])
        if not intent.ok:
            raise AuditError(f"intent: the {args.parser} parser could not read the prompt: {intent.error}")
        result = {"prompt": args.prompt, "requested": intent.requested, "negated": sorted(intent.negated),
                  "evidence": intent.evidence}
        if args.fmt == "json":
            print(json.dumps(result, indent=2, sort_keys=True))
            return
        print("requested: " + (", ".join(f"{d} {s:g} ({intent.evidence.get(d, '')})"
                                          for d, s in intent.requested.items()) or "none"))
        print("negated:   " + (", ".join(f"{d} ({intent.evidence.get(d, '')})" for d in sorted(intent.negated))
                               or "none"))
        return
    groups = ev.from_run(store)
    if not groups:
        raise AuditError(f"intent: {args.run} holds no prompt pairs; make them with "
                         f"`aesthetic-audit prompts {args.run}`")
    results = {group: ev.evaluate(parser, items) for group, items in groups.items()}
    print(json.dumps(results, indent=2, sort_keys=True) if args.fmt == "json" else ev.format_table(results))


def _validate_judge(args: argparse.Namespace) -> int:
    """Exit 0, or 1 when some images could not be judged (their annotations count as unmatched)."""
    from .judges import validate as v

    dims = _csv(args.dims)
    if args.bootstrap < 0:
        raise AuditError(f"--bootstrap {args.bootstrap}: must be >= 0")
    if args.images is None:
        result = v.validate(args.pred, args.gt, dims=dims, rounding=args.rounding, n_boot=args.bootstrap)
    else:
        from .config import load_config
        from .dimensions import load_catalogue, load_visionreward_rubric
        from .judges.stage import make_judge

        if args.gt is not None:
            raise AuditError("with --images give one file, the annotations (the judge makes the predictions)")
        config = load_config(args.config, {**parse_set(args.sets), **({"seed": args.seed} if args.seed is not None
                                                                       else {})})
        catalogue = load_catalogue(config.dimensions_file)
        rubric = load_visionreward_rubric(config.rubric_file) if config.rubric_file else None
        if rubric:
            catalogue = catalogue.with_rubrics({k: r["rubric"] for k, r in rubric.items()})
        judge = make_judge(args.judge, config.judge.options.get(args.judge))
        judge.prepare(catalogue, {k: r["options"] for k, r in rubric.items()} if rubric else None)
        judge.load()
        try:
            result = v.validate_judge(judge, args.images, args.pred, dims=dims, rounding=args.rounding,
                                      n_boot=args.bootstrap, seed=config.seed, batch_size=config.judge.batch_size)
        finally:
            judge.unload()
        for image, reason in list(result["failures"]["items"].items())[:20]:
            log.warning("failed: %s: %s", image, reason)
    if args.out:
        from .store.run import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
        log.info("wrote %s", args.out)
    print(json.dumps(result, indent=2, sort_keys=True) if args.fmt == "json" else v.format_table(result))
    return 1 if (result.get("failures") or {}).get("n") else 0


def _extra_tests(args: argparse.Namespace) -> int:
    """Exit 0, or 1 when the scorer failed on some images (listed; their comparisons left out)."""
    from .analysis import extra_tests as x
    from .config import load_config
    from .scorers.stage import make_scorer

    if args.bootstrap < 0:
        raise AuditError(f"--bootstrap {args.bootstrap}: must be >= 0")
    config = load_config(args.config, {**parse_set(args.sets), **({"seed": args.seed} if args.seed is not None
                                                                   else {})})

    def scorer(name: str):
        try:
            made = make_scorer(name, config.score.options.get(name))
        except AuditError as exc:
            raise AuditError(f"scorer {name}: {exc}") from None
        if getattr(made, "pairwise", False):
            raise AuditError(f"scorer {name} compares two images and gives no score per image; the extra tests "
                             "need a scalar scorer")
        return made

    if args.extra_test == "emotion":
        names = _csv(args.scorers) or []
        if not names:
            raise AuditError("--scorers: give at least one scorer name")
        scenes = x.read_emotion_manifest(args.manifest, args.reference, _csv(args.emotions))
        result = x.emotion_test(scenes, [scorer(n) for n in names], args.reference, n_boot=args.bootstrap,
                                seed=config.seed, chunk_size=config.score.chunk_size)
        table = x.format_emotion_table(result)
    else:
        if (args.ref_run is None) != (args.generator is None):
            raise AuditError("--run and --generator go together: the run holding the AI images' scores and the "
                             "generator whose images they are")
        s = scorer(args.scorer)
        artworks = x.read_artworks(args.artworks, args.prompt)
        board = x.read_leaderboard(args.leaderboard) if args.leaderboard else None
        reference = label = None
        if args.ref_run is not None:
            from .store import RunStore

            store = RunStore(args.ref_run, create=False, readonly=True)
            reference = x.reference_scores(store, s, args.generator, args.side)
            label = f"{args.generator} I_{args.side} in {args.ref_run}"
        result = x.real_art_test(artworks, s, reference=reference, reference_label=label, leaderboard=board,
                                 chunk_size=config.score.chunk_size)
        table = x.format_real_art_table(result)
    text = x.to_json(result)
    if args.out:
        from .store.run import atomic_write_text

        atomic_write_text(args.out, text)
        log.info("wrote %s", args.out)
    print(text.rstrip("\n") if args.fmt == "json" else table)
    return 1 if result["failures"] else 0


def _convert(args: argparse.Namespace) -> None:
    if args.mps and args.openclip:
        raise AuditError("--mps and --openclip name different checkpoint layouts: give one")
    if (args.activation != "gelu" or args.vision_head_width) and not args.openclip:
        raise AuditError("--activation and --vision-head-width apply to an open_clip checkpoint: add --openclip")
    if args.mps:
        from .scorers.mps import convert_checkpoint as convert_mps

        out = convert_mps(args.src, args.out)
    elif args.openclip:
        from .scorers._openclip import convert_checkpoint

        out = convert_checkpoint(args.src, args.out, allow_pickle=True, vision_head_width=args.vision_head_width,
                                 activation=args.activation)
    else:
        from .scorers._weights import convert_to_safetensors

        out = convert_to_safetensors(args.src, args.out, key=args.key)
    log.info("wrote %s", out)


def _annotate(args: argparse.Namespace) -> None:
    from .annotate import bind, create_app, is_loopback, load_setup, prepare, serve

    stored = load_setup(args.run) if (args.run / "records.sqlite").exists() else None
    seed = args.seed if args.seed is not None else stored.seed if stored else 0
    setup = prepare(args.run, pairs=args.pairs, raters=args.rater_names, n_raters=args.n_raters, seed=seed,
                    show_flagged=args.show_flagged)
    loopback = is_loopback(args.host)
    if not loopback:
        log.warning("warning: listening on %s: anyone who can reach this machine and holds a link can open "
                    "the app; links travel over plain HTTP", args.host)
    # on the loopback interface only this machine's names are accepted in Host (no DNS rebinding)
    app = create_app(args.run, allowed_hosts=[args.host, "127.0.0.1", "localhost"]
                     if loopback and ":" not in args.host else None)
    sock = bind(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{host}:{sock.getsockname()[1]}"
    for name, token in setup.tokens.items():
        print(f"rater {name}: {base}/r/{token}/", flush=True)
    print(f"agreement: {base}/a/{setup.admin_token}/", flush=True)
    serve(app, sock)


def _export(args: argparse.Namespace) -> None:
    from .store import RunStore
    from .store.export import export_stage

    layout = None
    if args.layout == "label-studio":
        from .labels.humans import export_label_studio

        store = RunStore(args.run, create=False, readonly=True)
        seed = (store.read_manifest().get("config") or {}).get("seed", 0)  # the run's seed orders the images
        out = export_label_studio(store, args.out, images=args.ls_images, url_prefix=args.url_prefix,
                                  document_root=args.document_root, seed=seed, pairs=args.pairs, models=args.models)
        log.info("wrote %s and %s", out / "tasks.json", out / "labeling_config.xml")
        return
    if args.stage is None:
        raise AuditError("--stage is required (prompts, images, judge, labels or score)")
    if args.layout != "own" and args.stage != "prompts":
        raise AuditError(f"--layout {args.layout} applies to --stage prompts only")
    if args.layout == "study":
        from .prompts.pairs_io import study_layout

        layout = study_layout
    elif args.layout == "generate":
        from .store.export import generate_layout

        layout = generate_layout(args.template)
    store = RunStore(args.run, create=False, readonly=True)
    path = export_stage(store, args.stage, args.out, args.format, include_failed=not args.ok_only, layout=layout,
                        origin=args.origin)
    log.info("wrote %s", path)


if __name__ == "__main__":
    sys.exit(main())
