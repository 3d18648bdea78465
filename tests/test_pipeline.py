"""The offline audit end to end: demo, rerun computes nothing, edit resumes after SIGKILL."""

import json
import subprocess
import sys

import pytest

from aesthetic_audit.store import RunStore
from test_resume import _env, _rows, kill_when

CLI = [sys.executable, "-m", "aesthetic_audit.cli", "-q"]
SMALL = ["--set", "prompts.n=20", "--set", "images.editor.pairs_per_photo=1",
         "--set", "images.editor.strengths=[0.5, 1.0]", "--set", "images.editor.max_side=160",
         "--set", "analysis.bootstrap=200"]


def test_demo_runs_every_stage_and_a_rerun_computes_nothing(tmp_path, cli):
    run = tmp_path / "demo"
    code, _, err = cli("demo", run, *SMALL)
    assert code == 0, err
    store = RunStore(run)
    counts = store.counts()
    assert counts["images"]["ok"] == 18 and counts["images"]["failed"] == 0  # 9 photos x 1 draw x 2 strengths
    assert counts["prompts"]["ok"] == 20 + 9
    analysis = json.loads((run / "analysis.json").read_text())
    assert set(analysis["scorers"]) == {"composite", "brisque", "nsfw"}
    assert analysis["n_pairs"] == 18 and all(s["n"] == 18 for s in analysis["scorers"].values())
    assert "classical" in analysis["judges"]
    html = (run / "report.html").read_text()
    assert "brisque" in html and "data:image/jpeg;base64," in html
    for table in ("summary.csv", "summary.md", "summary.tex"):
        assert (run / "tables" / table).exists()
    before = _rows(run)
    code, _, err = cli("-v", "demo", run, *SMALL)
    assert code == 0
    assert " 0 new" in err and all(" 0 new" in line for line in err.splitlines() if " new, " in line)
    assert _rows(run) == before


def test_edit_stage_resumes_after_sigkill(tmp_path):
    args = ["edit", "--set", "images.editor.max_side=256", "--set", "images.editor.pairs_per_photo=2"]
    killed = tmp_path / "killed"
    kill_when(CLI + [args[0], str(killed)] + args[1:], killed, at_least=12)
    partial = RunStore(killed).counts().get("images", {}).get("ok", 0)
    assert 0 < partial < 54
    subprocess.run(CLI + [args[0], str(killed)] + args[1:], check=True, env=_env(), timeout=300)
    clean = tmp_path / "clean"
    subprocess.run(CLI + [args[0], str(clean)] + args[1:], check=True, env=_env(), timeout=300)
    got, want = _rows(killed), _rows(clean)
    assert len([r for r in want if r[1] == "images"]) == 54
    assert got == want
    # edits are deterministic, so every image the killed run stored is one the finished run references
    files = {p.stem for p in (killed / "images").rglob("*.png")}
    referenced = {json.loads(d)[k] for _, stage, _, d in got if stage == "images" for k in ("image_o", "image_a")}
    assert files == referenced


@pytest.mark.slow
def test_full_default_demo(tmp_path, cli):
    """The README's main job at its defaults: 9 photos x 3 draws x 3 strengths."""
    code, _, err = cli("demo", tmp_path / "demo")
    assert code == 0, err
    analysis = json.loads((tmp_path / "demo" / "analysis.json").read_text())
    assert analysis["n_pairs"] == 81 and analysis["failures"]["n_failed"] == 0
    assert analysis["scorers"]["composite"]["prefer_original_share"]["estimate"] > 0.5
