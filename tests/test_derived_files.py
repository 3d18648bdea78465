"""Derived files (analysis.json, tables/*, report.html, exports): written whole or not at all, and
escaped as each format requires (issue 7, items 4 and 13)."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from aesthetic_audit.analysis import write_tables
from aesthetic_audit.errors import AuditError
from aesthetic_audit.pipeline import Run
from aesthetic_audit.records import IMAGES, SCORE, image_pair_key, score_key
from aesthetic_audit.report import write_report
from aesthetic_audit.store.export import export_stage
from aesthetic_audit.store.run import Record, RunStore, atomic_write_text

EVIL_SCORER = "=HYPERLINK(\"http://evil.example\",\"x\")<b>|"
EVIL_DIM = "<img src=x onerror=alert(1)>|x"


def _pair(store: RunStore, i: int, scorer: str = "clipish", dims=("clarity",)) -> list[Record]:
    """One image pair and a prompt-aware scorer's four scores: I_a scores 1.5 below I_o under p_o."""
    sha_o = store.put_image(Image.new("RGB", (8, 8), (200, 10 * i, 90)))
    sha_a = store.put_image(Image.new("RGB", (8, 8), (10, 10 * i, 30)))
    p_o, p_a = f"a cat number {i}", f"a murky cat number {i}"
    key = image_pair_key(backend={"name": "editor"}, inputs={"i": i}, seed=0)
    records = [Record(key, IMAGES, f"pair{i}", {
        "image_pair_id": key, "pair_id": f"p{i}", "p_o": p_o, "p_a": p_a, "dims": list(dims),
        "image_o": sha_o, "image_a": sha_a, "backend": "editor", "strength": 1.0, "transforms": [],
        "label": {"value": 1, "source": "test"}, "model": None, "source_item": None})]
    for image, prompt, score in ((sha_o, p_o, 3.0), (sha_o, p_a, 2.0), (sha_a, p_o, 1.5), (sha_a, p_a, 2.5)):
        records.append(Record(score_key(scorer={"name": scorer}, image=image, prompt=prompt), SCORE,
                              f"{scorer}:{image[:8]}", {"scorer": scorer, "image": image, "prompt": prompt,
                                                        "score": score, "tokens": 5, "truncated": False,
                                                        "higher_is_better": True}))
    return records


def _run(root, n: int = 2, **kw) -> Run:
    run = Run.open(root, overrides={"analysis.bootstrap": 100})
    run.store.put_many([r for i in range(n) for r in _pair(run.store, i, **kw)])
    return run


@pytest.fixture
def full_disk(monkeypatch):
    """While active, every file written through ``os.fdopen`` gets half its data, then ENOSPC."""
    real_fdopen = os.fdopen

    class HalfThenFull:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def activate():
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: HalfThenFull(real_fdopen(fd, *a, **k)))

    return activate


def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "images" not in p.parts and not p.name.startswith("records.sqlite")
            and p.name != "run.log"}


def _temp_files(root) -> list:
    return [p for p in root.rglob(".*.tmp")]


def test_a_full_disk_during_analyze_and_report_keeps_the_previous_files(tmp_path, full_disk):
    run = _run(tmp_path / "run")
    analysis = run.analyze()
    run.report(analysis)
    before = _snapshot(run.store.root)
    assert {"analysis.json", "report.html", "tables/summary.csv", "tables/summary.md",
            "tables/summary.tex"} <= set(before)
    run.store.put_many(_pair(run.store, 7))  # new results: every derived file would change
    full_disk()
    with pytest.raises(AuditError) as exc:
        run.analyze()
    message = str(exc.value)
    assert message.startswith(f"cannot write {run.store.root / 'analysis.json'}: No space left on device")
    assert "\n" not in message
    with pytest.raises(AuditError, match=r"cannot write .*report\.html: No space left on device"):
        run.report(analysis)
    with pytest.raises(AuditError, match=r"cannot write .*summary\.csv: No space left on device"):
        write_tables(analysis, run.store.root / "tables")
    assert _snapshot(run.store.root) == before
    assert _temp_files(run.store.root) == []


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_full_disk_during_export_keeps_the_previous_export(tmp_path, full_disk, fmt):
    store = RunStore(tmp_path / "run")
    store.put(Record("a", "prompts", "cap 1", {"index": 0, "p_o": "one", "p_a": "a dark one", "dims": ["clarity"]}))
    out = tmp_path / "out" / f"prompts.{fmt}"
    export_stage(store, "prompts", out)
    before = out.read_bytes()
    store.put(Record("b", "prompts", "cap 2", {"index": 1, "p_o": "two", "p_a": "a dark two", "dims": ["clarity"]}))
    full_disk()
    with pytest.raises(AuditError, match=rf"cannot write {out}: No space left on device; any previous version"):
        export_stage(store, "prompts", out)
    assert out.read_bytes() == before
    assert list(out.parent.iterdir()) == [out]


def test_a_read_only_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, cli):
    store = RunStore(tmp_path / "run")
    store.put(Record("a", "prompts", "cap 1", {"index": 0, "p_o": "one", "p_a": "x", "dims": []}))
    out = tmp_path / "prompts.csv"

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, _, err = cli("export", tmp_path / "run", "--stage", "prompts", "-o", out)
    assert code == 2
    assert err.strip().splitlines() == [f"error: cannot write {out}: Read-only file system; "
                                        "any previous version of the file is unchanged"]
    assert not out.exists()


def test_an_interrupt_mid_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    atomic_write_text(path, "<p>good</p>")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "<p>new</p>")
    assert path.read_text() == "<p>good</p>" and list(tmp_path.iterdir()) == [path]


KILLED_MID_WRITE = """
import os, signal, sys
from aesthetic_audit.store.run import atomic_write_text
# The process dies between writing the new data and renaming it into place.
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
atomic_write_text(sys.argv[1], "new " * 100000)
"""


def test_a_kill_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "analysis.json"
    atomic_write_text(path, '{"good": true}\n')
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], capture_output=True)
    assert proc.returncode == -9
    assert path.read_text() == '{"good": true}\n'
    # A killed process cannot clean up: its hidden temporary file is all that is left.
    (leftover,) = _temp_files(tmp_path)
    assert leftover.name.startswith(".analysis.json.") and leftover.read_text() == "new " * 100000


# -- escaping (item 13) -----------------------------------------------------------------------------

HOSTILE = ["=HYPERLINK(\"http://evil.example\",\"click\")", "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
           "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]


def test_csv_export_escapes_formula_cells_and_keeps_numbers(tmp_path):
    store = RunStore(tmp_path / "run")
    for i, text in enumerate(HOSTILE):
        store.put(Record(f"k{i}", "score", f"item {i}", {"index": i, "prompt": text, "score": -0.5 - i,
                                                         "label": "-0.5", "n": -3}))
    rows = list(csv.DictReader(export_stage(store, "score", tmp_path / "s.csv").open(newline="", encoding="utf-8")))
    assert [r["prompt"] for r in rows] == ["'" + text for text in HOSTILE]
    assert [float(r["score"]) for r in rows] == [-0.5 - i for i in range(len(HOSTILE))]
    assert {(r["label"], r["n"]) for r in rows} == {("-0.5", "-3")}  # signed numbers stay numbers
    # Parquet and JSONL are data formats: the values exactly as stored.
    jl = [json.loads(line) for line in export_stage(store, "score", tmp_path / "s.jsonl").read_text().splitlines()]
    pa_rows = pq.read_table(export_stage(store, "score", tmp_path / "s.parquet")).to_pylist()
    assert [r["prompt"] for r in jl] == [r["prompt"] for r in pa_rows] == HOSTILE


def test_study_csv_export_imports_back_exactly(tmp_path, cli):
    store = RunStore(tmp_path / "run")
    for i, text in enumerate(HOSTILE[:4] + ["- a dash first", "-0.5"]):
        store.put(Record(f"k{i}", "prompts", f"cap {i}", {"index": i, "origin": "captions", "p_o": text,
                                                          "p_a": f"=dark {i}", "dims": ["clarity"]}))
    out = tmp_path / "study.csv"
    assert cli("export", tmp_path / "run", "--stage", "prompts", "-o", out, "--layout", "study")[0] == 0
    assert "'=HYPERLINK" in out.read_text(encoding="utf-8")
    assert cli("prompts", tmp_path / "imp", "--import", out)[0] == 0
    got = sorted((r.data["p_o"], r.data["p_a"]) for r in RunStore(tmp_path / "imp").records("prompts"))
    assert got == sorted((r.data["p_o"], r.data["p_a"]) for r in store.records("prompts"))


def test_tables_escape_each_format(tmp_path):
    analysis = _run(tmp_path / "run", scorer=EVIL_SCORER).analyze()
    # Dimension keys cannot hold markup (the catalogue checks them), but a table must not rely on that.
    by_dim = analysis["scorers"][EVIL_SCORER]["by_dimension"]
    by_dim[EVIL_DIM] = by_dim.pop("clarity")
    write_tables(analysis, tmp_path / "tables")

    with open(tmp_path / "tables" / "summary.csv", newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["scorer"] == "'" + EVIL_SCORER
    assert float(row["delta_r"]) == -1.5 and row["delta_r"] == "-1.5"  # negative numbers are not escaped

    md = (tmp_path / "tables" / "dimensions.md").read_text(encoding="utf-8")
    assert "<img" not in md and "<b>" not in md
    evil_rows = [line for line in md.splitlines() if "onerror" in line]
    assert len(evil_rows) == 1
    assert evil_rows[0].startswith(
        '| =HYPERLINK("http://evil.example","x")&lt;b&gt;\\| | &lt;img src=x onerror=alert(1)&gt;\\|x | ')
    # every row keeps its 8 columns: 9 unescaped pipes
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert {line.replace("\\|", "").count("|") for line in table} == {9}

    tex = (tmp_path / "tables" / "dimensions.tex").read_text(encoding="utf-8")
    assert (r'\textless{}img src=x onerror=alert(1)\textgreater{}\textbar{}x' in tex
            and r'=HYPERLINK("http://evil.example","x")\textless{}b\textgreater{}\textbar{}' in tex)
