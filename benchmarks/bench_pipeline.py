"""The offline pipeline at two sizes, the store against bare sqlite3, resume checks at 100k items and the demo,
measured side by side in one run (issue 14's goals printed beside each figure, PASS or MISS).

1. stages   N and 10*N synthetic pairs (96 x 64 px photos; N = 30 by default): each stage runs in its own
            process, so the peak memory is that stage's (the child's ru_maxrss from wait4); time and CPU time
            are the stage call's inside it (not the interpreter's start). The two sizes of a stage run one
            after the other. Prompts take --captions (1600) and 10x that many captions (cheap per item); edit,
            judge, score, analyze and report work on one run of N photos edited once each (one pair per
            photo); import reads its own folder of N pairs. Report's time leaves out the analysis it is
            handed; its peak includes it.
            Goal: 10x the items -> <= 10.5x CPU time (wall beside it) and <= 1.2x peak memory.
2. store    records/s through the path the stages use (``store.writer()`` where the store has it, else
            ``store.put`` per record; ``put_many`` beside it) against bare sqlite3 with one transaction per
            row and in one transaction: the store's schema, pragmas and insert statement, rows the shape of
            prompt records. The bare sides get their rows ready-made (canonical JSON included), the store
            sides get Records. Sides interleaved round by round (order rotated), each round a fresh database;
            medians. A fifth side does the same job as the store in bare sqlite3 (each record's JSON made on the
            way in, one transaction). Goal: >= 20k records/s and >= 0.6x that same-job side.
3. resume   the rerun of a finished stage over --resume-items items: prompts (a caption file of that many
            lines, prompts.n null, template rewriter; the first run fills the store), score (composite)
            and judge (classical) on a store of items/2 synthetic image pairs, labels (a VLM labeller that
            is never called) on a store of that many pairs. Score, judge and label records are written with
            put_many under the keys the stages compute (the project's key functions and the backends'
            identities); every rerun must find all items cached. Each rerun in a fresh process; median.
            Goal: <= 2 s wall.
4. demo     ``aesthetic-audit -q demo`` in an empty folder once, then rerun; median of the reruns, the whole
            process (wall, CPU, peak). Goals: fresh <= 60 s and <= 1 GiB, rerun <= 3 s wall.

Runs on the code before issue 14 too (it detects ``store.writer``):

    python benchmarks/bench_pipeline.py                        # everything, about 5 minutes on 2 CPUs
    python benchmarks/bench_pipeline.py --quick --skip demo    # tiny sizes: a smoke test
    PYTHONPATH=/path/to/older/checkout/src python benchmarks/bench_pipeline.py --quick --json before.json

The machine's load average is printed with each section: CPU time is the steadier figure on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

SECTIONS = ("stages", "store", "resume", "demo")
STAGES = ("prompts", "edit", "judge", "score:composite", "score:brisque", "score:nsfw", "import", "analyze",
          "report")
UNITS = {"prompts": "captions", "edit": "pairs", "judge": "images", "score": "items", "import": "pairs",
         "analyze": "pairs", "report": "pairs"}
GOAL_TIME_RATIO, GOAL_PEAK_RATIO = 10.5, 1.2
GOAL_RATE, GOAL_RATE_RATIO = 20_000, 0.6
GOAL_RESUME_S = 2.0
GOAL_DEMO_FRESH_S, GOAL_DEMO_PEAK_MIB, GOAL_DEMO_RERUN_S = 60.0, 1024.0, 3.0
MIB = 1024.0  # ru_maxrss is in KiB on Linux

_COLOURS = ("red", "grey", "yellow", "small", "old", "wet", "striped")
_SUBJECTS = ("dog", "cyclist", "teapot", "lighthouse", "market stall", "child", "sailboat", "bus", "cat", "bridge",
             "kite", "bench", "tram")
_ACTIONS = ("stands beside", "rests near", "passes", "waits under", "sits in front of", "leans against")
_PLACES = ("a brick wall", "a quiet harbour", "an open field", "a busy street", "a wooden fence", "a row of trees",
           "a shop window", "a stone stair")
_TIMES = ("in the morning", "at dusk", "on a rainy day", "in bright sun", "at night")


def caption(i: int) -> str:
    """A distinct caption of COCO length (the number keeps every one distinct)."""
    return (f"A {_COLOURS[i % 7]} {_SUBJECTS[i // 7 % 13]} {_ACTIONS[i // 91 % 6]} {_PLACES[i // 546 % 8]} "
            f"{_TIMES[i % 5]}, scene {i}.")


def write_captions(path: Path, n: int) -> Path:
    path.write_text("".join(caption(i) + "\n" for i in range(n)), encoding="utf-8")
    return path


def photo(rng: np.random.Generator, w: int = 96, h: int = 64) -> Image.Image:
    """Smooth colour fields with mild noise: something every transform, judge and scorer can work on."""
    coarse = Image.fromarray((rng.random((4, 6, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_photos(folder: Path, n: int) -> Path:
    """A photo folder the editor reads: ``captions.csv`` with ``file,caption``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,caption"]
    for i in range(n):
        photo(rng).save(folder / f"p{i:06d}.png")
        rows.append(f"p{i:06d}.png,{caption(i).replace(',', '')}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def write_pairs(folder: Path, n: int) -> Path:
    """An import manifest of n pairs: I_a is I_o darkened."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = ["image_o,image_a,p_o,p_a,dims,model"]
    for i in range(n):
        o = photo(rng)
        o.save(folder / f"o{i:06d}.png")
        Image.fromarray((np.asarray(o) // 3).astype(np.uint8)).save(folder / f"a{i:06d}.png")
        text = caption(i).replace(",", "")
        rows.append(f"o{i:06d}.png,a{i:06d}.png,{text},A murky underexposed view: {text},color brightness,bench")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "pairs.csv"


# -- a stage in its own process -----------------------------------------------------------------------------

def child(spec_file: str) -> None:
    """Run one stage call as the spec says and write its times and summary next to the spec."""
    from aesthetic_audit.pipeline import Run

    spec = json.loads(Path(spec_file).read_text())
    run = Run.open(spec["run"], overrides=spec.get("overrides") or {})
    args = list(spec.get("args", []))
    if spec["call"] == "report":
        args = [run.analyze()]  # the report's own work is timed; this analysis counts only in its peak
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu, wall = time.process_time(), time.perf_counter()
    out = getattr(run, spec["call"])(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    summary = out[0] if isinstance(out, list) and out else out
    counts = {k: getattr(summary, k) for k in ("total", "new", "cached", "failed") if hasattr(summary, k)}
    Path(spec["out"]).write_text(json.dumps({"wall": wall, "cpu": cpu, "base_kib": base, "counts": counts,
                                             "errors": run.errors}))


def run_process(cmd: list[str], log: Path, cwd: Path | None = None) -> dict[str, Any]:
    """Run a command, waiting with wait4 so its own peak memory and CPU time come back."""
    with open(log, "w") as fh:
        wall = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - wall
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_kib": usage.ru_maxrss}


def stage_call(work: Path, name: str, run: Path, call: str, args: list | None = None,
               overrides: dict | None = None) -> dict[str, Any]:
    """One Run method in a fresh process: the call's wall and CPU time, the process's peak, the summary."""
    spec, out, log = (work / f"{name}.{suffix}" for suffix in ("spec.json", "out.json", "log"))
    spec.write_text(json.dumps({"run": str(run), "call": call, "args": args or [], "overrides": overrides or {},
                                "out": str(out)}))
    proc = run_process([sys.executable, __file__, "--child", str(spec)], log)
    if proc["rc"] != 0 or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {proc['rc']}: {tail[0][:160]}"}
    result = json.loads(out.read_text())
    result["peak_kib"] = proc["peak_kib"]
    if result["errors"]:
        result["error"] = result["errors"][0][:160]
    return result


# -- 1. stages at N and 10N --------------------------------------------------------------------------------

def section_stages(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sizes = {"N": args.n, "10N": 10 * args.n}
    captions = {k: args.captions * (10 if k == "10N" else 1) for k in sizes}
    inputs: dict[str, dict[str, Path]] = {}
    for k, n in sizes.items():
        folder = tmp / f"stages-{k}"
        folder.mkdir()
        inputs[k] = {"captions": write_captions(folder / "captions.txt", captions[k]),
                     "photos": write_photos(folder / "photos", n), "pairs": write_pairs(folder / "pairs", n),
                     "prompt_run": folder / "run-prompts", "edit_run": folder / "run-edit",
                     "import_run": folder / "run-import", "work": folder}

    def call(stage: str, k: str) -> dict[str, Any]:
        i = inputs[k]
        edit = {"images.editor.photos": str(i["photos"]), "images.editor.pairs_per_photo": 1,
                "images.editor.strengths": [0.7]}
        if stage == "prompts":
            return stage_call(i["work"], stage, i["prompt_run"], "prompts",
                              overrides={"prompts.source": str(i["captions"]), "prompts.n": None})
        if stage == "import":
            return stage_call(i["work"], stage, i["import_run"], "import_pairs", [str(i["pairs"])])
        if stage.startswith("score:"):
            return stage_call(i["work"], stage.replace(":", "-"), i["edit_run"], "score", [[stage[6:]]], edit)
        return stage_call(i["work"], stage, i["edit_run"], stage, overrides=edit)

    rows = {}
    for stage in [s for s in STAGES if s in args.stages]:
        rows[stage] = {k: call(stage, k) for k in sizes}
        for k, n in sizes.items():  # what the stage went through: its summary's total, else the pairs
            r = rows[stage][k]
            r["items"] = r.get("counts", {}).get("total") or (captions[k] if stage == "prompts" else n)
            r["failed"] = r.get("counts", {}).get("failed", 0)
    out = {"sizes": sizes, "captions": captions, "stages": rows}
    table_rows = []
    for stage, r in rows.items():
        a, b = r["N"], r["10N"]
        items = f"{a['items']}/{b['items']} {UNITS[stage.split(':')[0]]}"
        if "error" in a or "error" in b:
            table_rows.append([stage, items, "error: " + (a.get("error") or b["error"])])
            continue
        if a["failed"] or b["failed"]:
            items += f" ({a['failed']}/{b['failed']} failed)"
        time_ratio, wall_ratio = b["cpu"] / max(a["cpu"], 1e-9), b["wall"] / max(a["wall"], 1e-9)
        peak_ratio = b["peak_kib"] / a["peak_kib"]
        r.update(cpu_ratio=time_ratio, wall_ratio=wall_ratio, peak_ratio=peak_ratio,
                 ok=time_ratio <= GOAL_TIME_RATIO and peak_ratio <= GOAL_PEAK_RATIO)
        table_rows.append([
            stage, items, f"{a['cpu']:.2f}/{b['cpu']:.2f}", f"{a['wall']:.2f}/{b['wall']:.2f}",
            f"{a['peak_kib'] / MIB:.0f}/{b['peak_kib'] / MIB:.0f}",
            f"{(a['peak_kib'] - a['base_kib']) / MIB:.0f}/{(b['peak_kib'] - b['base_kib']) / MIB:.0f}",
            f"{time_ratio:.2f}x ({wall_ratio:.2f}x)", verdict(time_ratio <= GOAL_TIME_RATIO),
            f"{peak_ratio:.2f}x", verdict(peak_ratio <= GOAL_PEAK_RATIO)])
    table(f"1. stages at N = {args.n} and 10N = {10 * args.n} pairs (prompts: {captions['N']} and "
          f"{captions['10N']} captions); each figure N/10N",
          ["stage", "items", "cpu s", "wall s", "peak MiB", "grew MiB", "10N/N cpu (wall)", "<=10.5x",
           "10N/N peak", "<=1.2x"], table_rows)
    print("   grew = peak minus the process's peak once its run was open; items = the stage's own count")
    return out


# -- 2. store writes ----------------------------------------------------------------------------------------

INSERT = ("INSERT INTO records (key, stage, item, status, data, error, created, worker) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET status=excluded.status, "
          "data=excluded.data, error=excluded.error, created=excluded.created, worker=excluded.worker "
          "WHERE records.status = 'failed'")


def prompt_like_records(n: int) -> list:
    """Records the shape and size of the prompt stage's (about 600 bytes of JSON each)."""
    from aesthetic_audit.hashing import spec_hash
    from aesthetic_audit.store import Record

    out = []
    for i in range(n):
        key = spec_hash({"bench": "store", "i": i})
        text = caption(i)
        p_a = (f"Blurred out of focus with soft smeared edges, a muddy clashing palette and murky dim light, "
               f"{text[0].lower()}{text[1:]} The subject is pushed into a far corner of the frame.")
        out.append(Record(key, "prompts", f"captions.txt:line {i + 1}", {
            "pair_id": key, "index": i, "origin": "captions", "source": "captions.txt",
            "caption_id": f"captions.txt:line {i + 1}", "p_o": text, "p_a": p_a,
            "dims": ["clarity", "color aesthetic", "color brightness"], "rewriter": "template", "seed": 0,
            "words": len(p_a.split()), "meta": {"template": i % 7, "order": [2, 0, 1]}}))
    return out


SAME_JOB = "sqlite3, one transaction, JSON made per record"


def bare_connection(path: Path) -> sqlite3.Connection:
    from aesthetic_audit.store.run import SCHEMA

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def section_store(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from aesthetic_audit.hashing import canonical_json
    from aesthetic_audit.store import RunStore

    records = prompt_like_records(args.store_records)
    rows = [(r.key, r.stage, r.item, r.status, canonical_json(r.data), r.error, time.time(), "bench")
            for r in records]
    has_writer = hasattr(RunStore, "writer")
    stage_path = "store.writer()" if has_writer else "store.put per record"

    def through_stage_path(store: RunStore) -> None:
        if has_writer:
            with store.writer() as writer:
                for r in records:
                    writer.put(r)
        else:
            for r in records:
                store.put(r)

    def bare_per_row(conn: sqlite3.Connection) -> None:
        for row in rows:  # autocommit: each statement is its own transaction
            conn.execute(INSERT, row)

    def bare_one(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")

    def bare_one_json(conn: sqlite3.Connection) -> None:
        # The same job as the store's: each record's data serialised (json.dumps, sorted keys) on the way in.
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, [(r.key, r.stage, r.item, r.status,
                                   json.dumps(r.data, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
                                   r.error, time.time(), "bench") for r in records])
        conn.execute("COMMIT")

    sides: dict[str, tuple[Callable[[Path], Any], Callable[[Any], None]]] = {
        stage_path: (lambda d: RunStore(d), through_stage_path),
        "store.put_many": (lambda d: RunStore(d), lambda s: s.put_many(records)),
        "sqlite3, a transaction per row": (lambda d: bare_connection(d / "bare.sqlite"), bare_per_row),
        "sqlite3, one transaction": (lambda d: bare_connection(d / "bare.sqlite"), bare_one),
        SAME_JOB: (lambda d: bare_connection(d / "bare.sqlite"), bare_one_json),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    names = list(sides)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            folder = Path(tempfile.mkdtemp(dir=tmp))
            open_, write = sides[name]
            target = open_(folder)
            if isinstance(target, RunStore):
                target.db  # open the connection before timing
            cpu, wall = time.process_time(), time.perf_counter()
            write(target)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            target.close()
    n = len(records)
    figures = {name: {"rate": n / statistics.median(w for w, _ in t), "best": n / min(w for w, _ in t),
                      "cpu_us": 1e6 * statistics.median(c for _, c in t) / n} for name, t in times.items()}
    bare = figures["sqlite3, one transaction"]["rate"]
    same_job = figures[SAME_JOB]["rate"]
    table_rows = []
    for name, f in figures.items():
        f["ratio"], f["ratio_same_job"] = f["rate"] / bare, f["rate"] / same_job
        goal = name == stage_path
        f["ok"] = f["rate"] >= GOAL_RATE and f["ratio_same_job"] >= GOAL_RATE_RATIO if goal else None
        table_rows.append([name + (" (the stages' path)" if goal else ""), f"{f['rate']:,.0f}", f"{f['best']:,.0f}",
                           f"{f['cpu_us']:.1f}", f"{f['ratio']:.2f}x", f"{f['ratio_same_job']:.2f}x",
                           f">=20k, >=0.6x {verdict(f['ok'])}" if goal else ""])
    table(f"2. store writes: {n} prompt-shaped records per side, {args.rounds} interleaved rounds",
          ["path", "records/s median", "best", "cpu us/record", "vs one transaction", "vs same job", "goal"],
          table_rows)
    print("   one transaction: rows ready-made (JSON and all) before timing, sqlite3 alone; same job: one\n"
          "   transaction with each record's JSON made on the way in, as the store must. Goal ratio: vs same job")
    return {"records": n, "rounds": args.rounds, "stage_path": stage_path, "sides": figures}


# -- 3. resume checks at 100k items -------------------------------------------------------------------------

def image_sha(i: int, side: str) -> str:
    from aesthetic_audit.hashing import spec_hash

    return spec_hash({"bench image": i, "side": side})


def pair_records(n: int, start: int = 0) -> list:
    """n image pair records the shape of the editor's, with made-up image hashes (no files: a stage that
    finds everything cached never opens an image)."""
    from aesthetic_audit.hashing import spec_hash
    from aesthetic_audit.records import IMAGES
    from aesthetic_audit.store import Record

    out = []
    for i in range(start, start + n):
        key, text = spec_hash({"bench pair": i}), caption(i)
        out.append(Record(key, IMAGES, f"p{i:06d}#0@0.7", {
            "image_pair_id": key, "pair_id": spec_hash({"bench prompt": i}), "p_o": text,
            "p_a": f"Blurred and murky, with a dull clashing palette: {text}", "dims": ["clarity", "color aesthetic"],
            "image_o": image_sha(i, "o"), "image_a": image_sha(i, "a"), "backend": "editor", "strength": 0.7,
            "transforms": [{"name": "gaussian_blur", "dimension": "clarity", "version": "1", "params": {"sigma": 2.4}},
                           {"name": "palette_clash", "dimension": "color aesthetic", "version": "1",
                            "params": {"shift": 0.41, "amount": 0.7}}],
            "label": {"value": 1, "source": "construction"}, "model": "editor", "source_item": f"p{i:06d}"}))
    return out


def fill(store, n_pairs: int, per_pair: Callable[[Any], list]) -> None:
    """Image pair records and, per pair, the records ``per_pair`` makes, written in chunks."""
    chunk = 5000
    for start in range(0, n_pairs, chunk):
        pairs = pair_records(min(chunk, n_pairs - start), start)
        store.put_many(pairs + [r for p in pairs for r in per_pair(p)])


def section_resume(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from aesthetic_audit.hashing import spec_hash
    from aesthetic_audit.judges.stage import make_judge
    from aesthetic_audit.labels.stage import make_labeller
    from aesthetic_audit.pipeline import Run
    from aesthetic_audit.records import JUDGE, LABELS, SCORE, judge_key, label_key, score_key
    from aesthetic_audit.scorers.stage import make_scorer
    from aesthetic_audit.store import Record

    items = args.resume_items
    work = tmp / "resume"
    work.mkdir()
    labeller_options = {"url": "http://127.0.0.1:9/v1", "model": "bench-never-called"}
    label_overrides = {"labels.labellers": ["vlm"], "labels.options": {"vlm": labeller_options}}
    prompt_overrides = {"prompts.source": str(write_captions(work / "captions.txt", items)), "prompts.n": None}

    # score and judge: items/2 pairs, so items distinct images, each with its composite score and judgement
    pairs_run = Run.open(work / "run-pairs")
    scorer = make_scorer("composite")
    judge = make_judge("classical")
    judge.prepare(pairs_run.catalogue, None)
    s_id, j_id = scorer.identity(), judge.identity()
    dims = pairs_run.catalogue.keys()
    judged = [d for d in dims if d in judge.covers] if judge.covers else dims

    def score_and_judge(pair) -> list:
        out = []
        for image in (pair.data["image_o"], pair.data["image_a"]):
            for prompt in ((pair.data["p_o"], pair.data["p_a"]) if scorer.prompt_aware else (None,)):
                out.append(Record(score_key(scorer=s_id, image=image, prompt=prompt), SCORE,
                                  f"{image[:12]}|{(prompt or '')[:40]}", {
                                      "scorer": "composite", "scorer_id": spec_hash(s_id), "higher_is_better": True,
                                      "image": image, "prompt": prompt, "score": 6.25, "tokens": None,
                                      "truncated": False, "extra": {"J": {d: 1.25 for d in judged}}}))
            out.append(Record(judge_key(judge=j_id, image=image, dims=judged), JUDGE, image[:12], {
                "judge": "classical", "judge_id": spec_hash(j_id), "image": image,
                "scores": {d: (1.25 if d in judged else None) for d in dims}, "covered": judged,
                "statistics": {"sharpness": 0.41, "noise": 0.02, "exposure": 0.47, "colourfulness": 0.33,
                               "contrast": 0.21, "blocking": 0.01}}))
        return out

    start = time.perf_counter()
    fill(pairs_run.store, items // 2, score_and_judge)
    pairs_run.store.close()
    fills = {"score": time.perf_counter() - start}
    fills["judge"] = fills["score"]  # one store holds both

    labels_run = Run.open(work / "run-labels", overrides=label_overrides)
    labeller = make_labeller("vlm", labeller_options)
    l_id, seed = labeller.identity(), labels_run.config.seed

    def label(pair) -> list:
        d = pair.data
        key = label_key(source=l_id, image_o=d["image_o"], image_a=d["image_a"], prompt=d["p_a"], seed=seed)
        return [Record(key, LABELS, f"vlm:{pair.key[:12]}", {
            "source": "vlm:vlm", "labeller": "vlm", "labeller_id": spec_hash(l_id), "labeller_desc": "vlm (bench)",
            "seed": seed, "image_pair_id": pair.key, "pair_id": d["pair_id"], "model": "editor",
            "image_o": d["image_o"], "image_a": d["image_a"], "p_a": d["p_a"], "value": 1,
            "answers": [{"first": "o", "selection": 1, "value": 1}], "disagree": None})]

    start = time.perf_counter()
    fill(labels_run.store, items, label)
    labels_run.store.close()
    fills["labels"] = time.perf_counter() - start

    first = stage_call(work, "prompts-fill", work / "run-prompts", "prompts", overrides=prompt_overrides)
    fills["prompts"] = first.get("wall", float("nan"))
    checks = {"prompts": (work / "run-prompts", "prompts", [], prompt_overrides),
              "score": (work / "run-pairs", "score", [["composite"]], {}),
              "judge": (work / "run-pairs", "judge", [["classical"]], {}),
              "labels": (work / "run-labels", "labels", [], label_overrides)}
    results: dict[str, Any] = {}
    table_rows = []
    for name, (run, call_name, call_args, overrides) in checks.items():
        reruns = [stage_call(work, f"{name}-rerun{i}", run, call_name, call_args, overrides)
                  for i in range(args.reruns)]
        failed = next((r["error"] for r in reruns if "error" in r), None)
        if failed or "error" in first and name == "prompts":
            results[name] = {"error": failed or first["error"]}
            table_rows.append([name, str(items), f"error: {results[name]['error']}"])
            continue
        counts = reruns[0]["counts"]
        all_cached = counts.get("cached") == counts.get("total") == items and not counts.get("new")
        wall = statistics.median(r["wall"] for r in reruns)
        cpu = statistics.median(r["cpu"] for r in reruns)
        results[name] = {"items": items, "fill_s": fills[name], "wall": wall, "cpu": cpu,
                         "walls": [r["wall"] for r in reruns], "counts": counts, "all_cached": all_cached,
                         "ok": all_cached and wall <= GOAL_RESUME_S}
        table_rows.append([name, str(items), f"{fills[name]:.1f}", f"{wall:.2f}", f"{min(results[name]['walls']):.2f}",
                           f"{cpu:.2f}", f"{counts.get('cached')}/{counts.get('total')}" +
                           ("" if all_cached else " NOT ALL CACHED"),
                           verdict(results[name]["ok"])])
    table(f"3. resume check of a finished stage at {items} items, median of {args.reruns} reruns (each a fresh "
          f"process; the stage call only)",
          ["stage", "items", "fill s", "wall s", "min", "cpu s", "cached/total", "<=2 s"], table_rows)
    print("   fill: prompts by a first run of the stage; score, judge (one store) and labels by put_many of "
          "synthetic records")
    return results


# -- 4. the demo ---------------------------------------------------------------------------------------------

def section_demo(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    folder = tmp / "demo"
    folder.mkdir()
    script = Path(sys.executable).with_name("aesthetic-audit")
    cli = [str(script)] if script.exists() else [sys.executable, "-c",
                                                 "import sys; from aesthetic_audit.cli import main; sys.exit(main())"]
    fresh = run_process(cli + ["-q", "demo"], folder / "fresh.log", folder)
    reruns = [run_process(cli + ["-q", "demo"], folder / f"rerun{i}.log", folder) for i in range(args.reruns)]
    out: dict[str, Any] = {"fresh": fresh, "reruns": reruns}
    if fresh["rc"] != 0 or any(r["rc"] != 0 for r in reruns):
        out["error"] = (folder / "fresh.log").read_text(errors="replace")[-300:]
        print(f"\n4. demo: failed (exit {fresh['rc']}): {out['error']}")
        return out
    rerun = {k: statistics.median(r[k] for r in reruns) for k in ("wall", "cpu", "peak_kib")}
    out["rerun"] = rerun
    out["ok"] = (fresh["wall"] <= GOAL_DEMO_FRESH_S and fresh["peak_kib"] / MIB <= GOAL_DEMO_PEAK_MIB
                 and rerun["wall"] <= GOAL_DEMO_RERUN_S)
    table(f"4. aesthetic-audit -q demo, whole process: fresh once, rerun median of {args.reruns}",
          ["run", "wall s", "cpu s", "peak MiB", "goal"],
          [["fresh", f"{fresh['wall']:.1f}", f"{fresh['cpu']:.1f}", f"{fresh['peak_kib'] / MIB:.0f}",
            f"<=60 s, <=1 GiB {verdict(fresh['wall'] <= GOAL_DEMO_FRESH_S and fresh['peak_kib'] / MIB <= 1024)}"],
           ["rerun", f"{rerun['wall']:.2f}", f"{rerun['cpu']:.2f}", f"{rerun['peak_kib'] / MIB:.0f}",
            f"<=3 s wall {verdict(rerun['wall'] <= GOAL_DEMO_RERUN_S)}"],
           *[[f"  rerun {i + 1}", f"{r['wall']:.2f}", f"{r['cpu']:.2f}", f"{r['peak_kib'] / MIB:.0f}", ""]
             for i, r in enumerate(reruns)]])
    return out


# -- printing -------------------------------------------------------------------------------------------------

def verdict(ok: bool | None) -> str:
    return "PASS" if ok else "MISS"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows] if i < len(r)) for i in range(len(header))]
    print(f"\n{title}  [load {os.getloadavg()[0]:.1f}]")
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="pairs at the small size of section 1 (default 30; "
                   "--quick 3); the large size is 10x")
    p.add_argument("--captions", type=int, default=None, help="captions of the prompt stage at the small size "
                   "(default 1600; --quick 100)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, metavar="STAGE",
                   help=f"section 1's stages (default all: {' '.join(STAGES)})")
    p.add_argument("--store-records", type=int, default=None, help="records per side and round (default 10000)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of section 2 (default 5)")
    p.add_argument("--resume-items", type=int, default=None, help="items of section 3 (default 100000)")
    p.add_argument("--reruns", type=int, default=None, help="reruns in sections 3 and 4 (default 3; --quick 1)")
    p.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="leave a section out (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one rerun: a smoke test, not a measurement")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return
    quick = args.quick
    for name, full, small in (("n", 30, 3), ("captions", 1600, 100), ("store_records", 10_000, 1000),
                              ("rounds", 5, 2), ("resume_items", 100_000, 2000), ("reruns", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    import aesthetic_audit

    print(f"aesthetic_audit from {Path(aesthetic_audit.__file__).parent}; {os.cpu_count()} CPUs"
          + ("; --quick: tiny sizes, not a measurement" if quick else ""))
    started = time.perf_counter()
    figures: dict[str, Any] = {"code": str(Path(aesthetic_audit.__file__).parent), "quick": quick}
    sections = {"stages": section_stages, "store": section_store, "resume": section_resume, "demo": section_demo}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for name, section in sections.items():
            if name not in args.skip:
                start = time.perf_counter()
                figures[name] = section(args, Path(tmp))
                print(f"   ({name}: {time.perf_counter() - start:.0f} s)")
    figures["seconds"] = time.perf_counter() - started
    print(f"\n({figures['seconds']:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
