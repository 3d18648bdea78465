"""Records made by today's code equal those made before the performance work, key for key and byte for byte.

``tests/data/records_before.json`` was written by this file's ``--write`` mode at aeb266c, the commit before the store,
stage and encoding changes (see the README's performance section). A small run goes through every offline
stage that writes records (prompts, edit, import, judge, score, human labels) with the PNG level old runs
keep (``images.png_level: 6``), and each record's key, stage, item, status, error and a hash of its
canonical data must match. Regenerate the file only for a change that is meant to change records, and say so
in the commit.

    python tests/test_records_unchanged.py --write
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).parent / "data" / "records_before.json"
# What the run is made with. The PNG level is the one every run made before the change used; the override is
# only passed when the config knows the setting (the fixture itself was written before it existed).
# The scorers are those of the fixture's time (the default list has grown since: new scorers add records).
OVERRIDES = {"prompts.n": 10, "images.editor.pairs_per_photo": 1, "score.scorers": ["composite", "brisque", "nsfw"]}
LEGACY_PNG = {"images.png_level": 6}


def _pairs_folder(root: Path) -> Path:
    """Three imported pairs whose images are seeded noise with a gradient (PNG and JPEG inputs)."""
    folder = root / "pairs"
    folder.mkdir()
    rows = []
    for i in range(3):
        rng = np.random.default_rng(100 + i)
        base = np.linspace(0, 255, 40 * 32 * 3).reshape(32, 40, 3)
        o = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        a = (o // 3).astype(np.uint8)
        Image.fromarray(o).save(folder / f"o{i}.png")
        Image.fromarray(a).save(folder / f"a{i}.jpg", quality=90)
        rows.append({"image_o": f"o{i}.png", "image_a": f"a{i}.jpg", "p_o": f"a gradient number {i}",
                     "p_a": f"a dark gradient number {i}", "dims": "color brightness", "model": "test"})
    with open(folder / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "pairs.csv"


def fingerprint(run_dir: Path) -> list[list]:
    """[stage, key, item, status, error, sha256 of the record's canonical data] per record, sorted by key."""
    from aesthetic_audit.hashing import canonical_json
    from aesthetic_audit.store import RunStore

    store = RunStore(run_dir, create=False)
    rows = []
    for status in ("ok", "failed"):
        for r in store.records(status=status):
            digest = hashlib.sha256(canonical_json(r.data).encode()).hexdigest()
            rows.append([r.stage, r.key, r.item, r.status, r.error, digest])
    store.close()
    return sorted(rows, key=lambda row: row[1])


def build(root: Path, overrides: dict) -> dict[str, list[list]]:
    """Both runs (the editor run and the import run) under ``root``, fingerprinted."""
    from aesthetic_audit.pipeline import Run

    edit = Run.open(root / "edit", overrides={**OVERRIDES, **overrides})
    edit.prompts()
    edit.edit()
    edit.judge()
    edit.score()
    edit.store.close()
    manifest = _pairs_folder(root)
    imported = Run.open(root / "import", overrides={**OVERRIDES, **overrides})
    imported.import_pairs(manifest)
    imported.judge()
    imported.score()
    pair = next(imported.store.records("images"))
    labels = root / "labels.csv"
    labels.write_text(f"image_pair_id,rater,choice\n{pair.key},ann1,anti-aesthetic\n")
    imported.labels(import_path=labels)
    imported.store.close()
    return {"edit": fingerprint(root / "edit"), "import": fingerprint(root / "import")}


def test_records_equal_those_made_before_the_change(tmp_path):
    expected = json.loads(DATA.read_text())
    got = build(tmp_path, LEGACY_PNG)
    for run in ("edit", "import"):
        want = {row[1]: row for row in expected[run]}
        have = {row[1]: row for row in got[run]}
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        assert not missing and not extra, f"{run}: keys missing {missing[:3]}, new {extra[:3]}"
        differ = [k for k in want if want[k] != have[k]]
        assert not differ, f"{run}: {len(differ)} records differ, e.g. {want[differ[0]]} vs {have[differ[0]]}"
        assert len(have) > 50 if run == "edit" else len(have) > 10


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = build(Path(tmp), {})
    DATA.write_text(json.dumps(result, indent=0, sort_keys=True) + "\n")
    print({k: len(v) for k, v in result.items()}, "records written to", DATA)
