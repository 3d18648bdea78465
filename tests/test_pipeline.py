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
    assert set(analysis["scorers"]) == {"composite", "brisque", "nsfw", "intent-aware"}
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


def _manifest_pairs(tmp_path, n=2):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    lines = ["image_o,image_a,p_o,p_a,dims"]
    for i in range(n):
        for side in ("o", "a"):
            arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / f"{i}{side}.png")
        lines.append(f"{i}o.png,{i}a.png,A cat {i}.,A blurry cat {i}.,clarity")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "pairs.csv"


def test_run_after_import_scores_the_imported_pairs_only(tmp_path, cli):
    manifest = _manifest_pairs(tmp_path)
    run = tmp_path / "run"
    assert cli("import", run, manifest)[0] == 0
    code, _, err = cli("run", run, "--set", "score.scorers=[composite]", "--set", "analysis.bootstrap=200")
    assert code == 0, err
    assert RunStore(run).counts()["images"] == {"ok": 2, "failed": 0}
    assert json.loads((run / "analysis.json").read_text())["n_pairs"] == 2


def test_report_is_never_stale(tmp_path, cli):
    manifest = _manifest_pairs(tmp_path)
    run = tmp_path / "run"
    cli("import", run, manifest)
    cli("score", run, "--scorers", "composite")
    cli("analyze", run)
    cli("score", run, "--scorers", "brisque")
    assert cli("report", run)[0] == 0
    assert set(json.loads((run / "analysis.json").read_text())["scorers"]) == {"composite", "brisque"}


def test_reading_commands_do_not_create_runs(tmp_path, cli):
    for cmd in ("judge", "score", "analyze", "report", "status"):
        code, _, err = cli(cmd, tmp_path / "typo")
        assert code == 2 and "does not exist" in err
    assert not (tmp_path / "typo").exists()


def test_exit_status_says_when_items_failed(tmp_path, cli):
    manifest = _manifest_pairs(tmp_path)
    (tmp_path / "1a.png").write_bytes(b"")  # one pair's anti-aesthetic image is broken
    run = tmp_path / "run"
    assert cli("import", run, manifest)[0] == 1
    assert cli("import", run, manifest)[0] == 1  # still failed on a rerun: the status does not forget
    assert cli("score", run, "--scorers", "composite")[0] == 0


def test_analysis_uses_the_scores_of_the_scorer_as_it_last_ran(tmp_path):
    from aesthetic_audit.pipeline import Run
    from aesthetic_audit.registry import register
    from aesthetic_audit.scorers.base import Scorer, ScoreResult

    @register("scorers", "offset-test")
    class Offset(Scorer):
        name = "offset-test"
        prompt_aware = False

        def _score(self, items):
            return [ScoreResult(float(self.options.get("offset", 0))) for _ in items]

    manifest = _manifest_pairs(tmp_path)
    run = Run.open(tmp_path / "run", overrides={"score.scorers": ["offset-test"], "analysis.bootstrap": 200})
    run.import_pairs(manifest)
    run.score()
    run = Run.open(tmp_path / "run", overrides={"score.options": {"offset-test": {"offset": 5}}})
    run.score()
    assert run.store.counts()["score"]["ok"] == 8  # both option sets' scores are kept...
    analysis = run.analyze()
    assert analysis["scorers"]["offset-test"]["aa"]["estimate"] == 5.0  # ...but only the current ones count
