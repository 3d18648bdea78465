"""Bad input at the command line ends in one line and exit 2 (or a failed record and exit 1), never a
traceback; what the command stored stays good. Each case builds its own bad input."""

import errno
import json
import os
import re
import sqlite3
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aesthetic_audit.config import load_config, split_key
from aesthetic_audit.errors import AuditError, ConfigError
from aesthetic_audit.registry import register
from aesthetic_audit.scorers.base import Scorer, ScoreResult
from aesthetic_audit.store import RunStore
from test_pipeline import _manifest_pairs

CLI = [sys.executable, "-m", "aesthetic_audit.cli"]
ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def imported(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("import", run, _manifest_pairs(tmp_path))[0] == 0
    return run


# -- config values: validated before anything is stored ------------------------------------------

def test_unknown_scorer_or_judge_exits_2_and_is_not_stored(imported, cli):
    before = json.loads((imported / "manifest.json").read_text())["config"]
    code, _, err = cli("-q", "score", imported, "--scorers", "brisque,nosuch")
    assert code == 2 and "unknown scorer 'nosuch'" in err and "available: " in err
    code, _, err = cli("-q", "judge", imported, "--judges", "nojudge")
    assert code == 2 and "unknown judge 'nojudge'" in err
    assert json.loads((imported / "manifest.json").read_text())["config"] == before
    assert "score" not in RunStore(imported).counts()  # nothing ran
    code, _, err = cli("-q", "score", imported, "--scorers", "composite")  # a later run is not poisoned
    assert code == 0, err


def test_flags_persist_into_the_stored_config_and_status_shows_it(imported, cli):
    assert cli("-q", "score", imported, "--scorers", "composite", "--seed", "7")[0] == 0
    code, out, _ = cli("status", imported)
    assert code == 0
    assert "seed 7;" in out and "scorers composite" in out and "images import" in out


def test_scorer_names_with_dots_in_set_keys(tmp_path):
    assert split_key("score.options.hpsv2.1.device") == ["score", "options", "hpsv2.1", "device"]
    assert split_key('score.options."hpsv2.1".device') == ["score", "options", "hpsv2.1", "device"]
    assert split_key("score.options['hpsv2.1']") == ["score", "options", "hpsv2.1"]
    assert split_key("score.options[hpsv2.1].batch_size") == ["score", "options", "hpsv2.1", "batch_size"]
    assert split_key("score.options.hpsv2.device") == ["score", "options", "hpsv2", "device"]
    assert split_key("prompts.llm.base_url") == ["prompts", "llm", "base_url"]
    for bad in ("a..b", "a.", ".a", 'a"b'):
        with pytest.raises(ConfigError):
            split_key(bad)
    cfg = load_config(None, {"score.options.hpsv2.1": {"device": "cpu", "batch_size": 4}})
    assert cfg.score.options == {"hpsv2.1": {"device": "cpu", "batch_size": 4}}
    cfg = load_config(None, {'score.options."hpsv2.1".dtype': "bf16"})
    assert cfg.score.options == {"hpsv2.1": {"dtype": "bf16"}}
    # What the old parser stored: options of scorer hpsv2 named "1". Refused, pointing at the quoting.
    with pytest.raises(ConfigError, match=r"hpsv2\.1.*quote it"):
        load_config(None, {"score.options": {"hpsv2": {"1": {"device": "cpu"}}}})


def test_options_for_unknown_scorers_or_unknown_options_are_errors():
    with pytest.raises(ConfigError, match="unknown scorer 'nosuch'"):
        load_config(None, {"score.options.nosuch": {"device": "cpu"}})
    with pytest.raises(ConfigError, match=r"scorer brisque: bad options \['devise'\]"):
        load_config(None, {"score.options.brisque": {"devise": "cpu"}})
    with pytest.raises(ConfigError, match="score.options.composite: Input should be a valid dictionary"):
        load_config(None, {"score.options.composite": 5})


def test_bad_flag_values_exit_2(tmp_path, cli, capsys):
    for argv in (["edit", tmp_path / "r", "--strengths", "abc"], ["prompts", tmp_path / "r", "--seed", "-3"],
                 ["prompts", tmp_path / "r", "--seed", "x"]):
        with pytest.raises(SystemExit) as exc:
            cli(*argv)
        assert exc.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    code, _, err = cli("prompts", tmp_path / "r", "--set", "seed=-1")
    assert code == 2 and "seed: Input should be greater than or equal to 0" in err
    assert not (tmp_path / "r").exists()


def test_config_that_is_a_directory_or_invalid_creates_no_run(tmp_path, cli):
    code, _, err = cli("prompts", tmp_path / "r", "-c", tmp_path)
    assert code == 2 and "is a directory" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts:\n  nn: 3\n")
    code, _, err = cli("prompts", tmp_path / "r", "-c", bad)
    assert code == 2 and "unknown key 'prompts.nn'" in err
    assert not (tmp_path / "r").exists()


# -- damaged runs and a damaged machine ------------------------------------------------------------

def test_corrupt_manifest(imported, cli):
    (imported / "manifest.json").write_text('{"config": {"seed": ')
    for argv in (["status", imported], ["score", imported], ["report", imported]):
        code, _, err = cli("-q", *argv)
        _one_line_error(code, err, "manifest.json is corrupt")


def test_corrupt_database(imported, tmp_path):
    (imported / "records.sqlite").write_bytes(b"this is not sqlite" * 300)
    for name in ("records.sqlite-wal", "records.sqlite-shm"):
        (imported / name).unlink(missing_ok=True)
    # In a fresh process: this one still holds the run's WAL index from the import.
    for argv in (["status", imported], ["export", imported, "--stage", "images", "-o", tmp_path / "x.csv"],
                 ["score", imported], ["report", imported]):
        res = subprocess.run([*CLI, "-q", *map(str, argv)], capture_output=True, text=True)
        _one_line_error(res.returncode, res.stderr, "not a readable run database")


def test_full_disk_is_one_line(imported, cli, monkeypatch):
    # Import first every module that binds the writers by name: one first imported while the patch is on
    # would keep the failing writer for every later test (seen when this file runs before the pipeline's).
    import importlib

    for module in ("aesthetic_audit.analysis.audit", "aesthetic_audit.report.html", "aesthetic_audit.labels.humans",
                   "aesthetic_audit.store.export", "aesthetic_audit.pipeline", "aesthetic_audit.cli"):
        importlib.import_module(module)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(imported / "analysis.json"))

    monkeypatch.setattr("aesthetic_audit.store.run.atomic_write", full)
    monkeypatch.setattr("aesthetic_audit.store.run.atomic_write_text", full)
    code, _, err = cli("-q", "analyze", imported)
    assert code == 2 and "Traceback" not in err
    assert "No space left on device" in err and "analysis.json" in err
    monkeypatch.undo()

    def db_full(self, records):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RunStore, "put_many", db_full)
    code, _, err = cli("-q", "score", imported, "--scorers", "composite")
    _one_line_error(code, err, "database or disk is full")


def test_unexpected_exceptions_end_in_one_line(imported, cli, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr("aesthetic_audit.pipeline.Run.analyze", boom)
    code, _, err = cli("-q", "analyze", imported)
    _one_line_error(code, err, "unexpected RuntimeError: something nobody planned for")


def _read_only(run: Path, argv: list) -> subprocess.CompletedProcess:
    """Run the CLI on ``run`` as a read-only file system (root: a private read-only bind mount, which
    ends with the process; others: permission bits)."""
    cmd = " ".join(shlex.quote(str(a)) for a in [*CLI, *argv])
    if os.geteuid() == 0:
        script = f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && {cmd}"
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True)
    return subprocess.run(cmd, shell=True, capture_output=True, text=True)


def _can_make_read_only(tmp_path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = tmp_path / "probe"
    probe.mkdir()
    return _read_only(probe, ["--version"]).returncode == 0


def test_read_only_run_directory(imported, tmp_path):
    if not _can_make_read_only(tmp_path):
        pytest.skip("cannot make a read-only mount here (needs unshare and mount)")
    if os.geteuid() != 0:
        for root, dirs, files in os.walk(imported):
            os.chmod(root, 0o555)
    try:
        status = _read_only(imported, ["status", imported])
        assert status.returncode == 0, status.stderr
        assert re.search(r"images\s+2 ok\s+0 failed", status.stdout)
        export = _read_only(imported, ["export", imported, "--stage", "images", "-o", "/dev/stdout",
                                       "--format", "jsonl"])
        assert export.returncode == 0 and export.stdout.count("\n") == 2, export.stderr
        for argv in (["score", imported, "--scorers", "composite"], ["analyze", imported]):
            res = _read_only(imported, ["-q", *argv])
            _one_line_error(res.returncode, res.stderr)
            assert re.search("not writable|Read-only file system|readonly|Permission denied", res.stderr)
    finally:
        for root, dirs, files in os.walk(imported):
            os.chmod(root, 0o755)


# -- nothing to do, backends that cannot run -------------------------------------------------------

def test_prompts_only_run_says_what_to_run_next(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("-q", "prompts", run, "-n", "5")[0] == 0
    for cmd in ("judge", "score", "analyze", "report"):
        code, _, err = cli(cmd, run)
        assert code == 1, (cmd, err)
        assert "nothing to do" in err and "5 prompt pairs but no image pairs" in err and f"edit {run}" in err
    assert not (run / "report.html").exists() and not (run / "analysis.json").exists()


class _Unloadable(Scorer):
    name = "unloadable-test"
    fail = True

    def _load(self):
        if _Unloadable.fail:
            raise AuditError("weights file /models/x.safetensors is missing")

    def _score(self, items):
        return [ScoreResult(1.0) for _ in items]


@pytest.fixture
def unloadable():
    """Registered for one test only: the contract tests run over every registered scorer."""
    from aesthetic_audit import registry

    register("scorers")(_Unloadable)
    yield _Unloadable
    registry._REGISTRY["scorers"].pop(_Unloadable.name)


def test_a_backend_that_cannot_run_is_listed_by_status_until_it_runs(imported, cli, unloadable):
    _Unloadable.fail = True
    code, _, err = cli("score", imported, "--scorers", "unloadable-test,composite")
    assert code == 1
    assert err.count("weights file /models/x.safetensors is missing") == 1
    code, out, _ = cli("status", imported)
    assert "backends that could not run (1):" in out
    assert "scorer unloadable-test: weights file /models/x.safetensors is missing" in out
    assert "--retry-failed" in out
    _Unloadable.fail = False
    assert cli("-q", "score", imported, "--scorers", "unloadable-test")[0] == 0
    code, out, _ = cli("status", imported)
    assert "could not run" not in out and "failed items" not in out


# -- the command line itself -----------------------------------------------------------------------

def test_verbosity_flags_after_the_subcommand(imported, cli):
    code, _, err = cli("score", imported, "--scorers", "composite", "-q")
    assert code == 0 and err == ""
    code, _, err = cli("score", imported, "--scorers", "composite", "-v")
    assert code == 0 and "0 new" in err


def test_status_into_a_closed_pipe_is_quiet(imported):
    proc = subprocess.run(f"{sys.executable} -m aesthetic_audit.cli status {imported} | head -c 1",
                          shell=True, capture_output=True, text=True)
    assert proc.stdout == "r" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_help_texts_describe_every_subcommand(cli, capsys):
    for sub in ("init", "prompts", "edit", "import", "judge", "score", "analyze", "report", "run", "demo",
                "status", "export", "convert", "ls", "intent"):
        with pytest.raises(SystemExit):
            cli(sub, "--help")
        out = capsys.readouterr().out
        description = out.split("\n\n")[1]
        assert not description.startswith(("positional", "options")), (sub, out)
    with pytest.raises(SystemExit):
        cli("score", "--help")
    out = capsys.readouterr().out
    assert "hpsv2.1" in out and "default: composite, brisque, nsfw, intent-aware" in out
    with pytest.raises(SystemExit):
        cli("import", "--help")
    out = capsys.readouterr().out
    assert "manifest" in out and "save_to_disk" in out and "--allow-outside" in out


def test_ls_transforms_prints_plain_text(cli):
    code, out, _ = cli("ls", "transforms")
    assert code == 0 and "pixelation" in out and "`" not in out


def test_readme_yaml_examples_parse_as_meant(tmp_path):
    from aesthetic_audit.dimensions import load_catalogue

    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "dimensions:" in b)
    path = tmp_path / "dims.yaml"
    path.write_text(block)
    cat = {d.key: d for d in load_catalogue(path)}
    data = yaml.safe_load(block)["dimensions"]
    for entry in data:
        for phrasing in entry.get("phrasings", []):
            assert phrasing in cat[entry["key"]].phrasings
    override = next(e for e in data if e["key"] == "clarity")
    assert override["phrasings"] == ["a smeared, unfocused haze"]  # one phrasing, not two
