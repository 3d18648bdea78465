"""A rerun reuses analysis.json, tables/ and report.html when nothing they are made from has changed, and
makes them again when a record, a setting or a file has (analysis/reuse.py; issue 14)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from aesthetic_audit.analysis import audit
from aesthetic_audit.pipeline import Run
from aesthetic_audit.records import IMAGES, SCORE, image_pair_key, score_key
from aesthetic_audit.report import html
from aesthetic_audit.store.run import Record, RunStore


def _pair(store: RunStore, i: int) -> list[Record]:
    """One image pair and a prompt-aware scorer's four scores, I_o above I_a under p_a."""
    sha_o = store.put_image(Image.new("RGB", (8, 8), (200, 10 * i, 90)))
    sha_a = store.put_image(Image.new("RGB", (8, 8), (10, 10 * i, 30)))
    p_o, p_a = f"a cat number {i}", f"a murky cat number {i}"
    key = image_pair_key(backend={"name": "editor"}, inputs={"i": i}, seed=0)
    records = [Record(key, IMAGES, f"pair{i}", {
        "image_pair_id": key, "pair_id": f"p{i}", "p_o": p_o, "p_a": p_a, "dims": ["clarity"],
        "image_o": sha_o, "image_a": sha_a, "backend": "editor", "strength": 1.0, "transforms": [],
        "label": None, "model": None, "source_item": None})]
    for image, prompt, score in ((sha_o, p_o, 3.0), (sha_o, p_a, 2.0 + i), (sha_a, p_o, 1.5), (sha_a, p_a, 2.5)):
        records.append(Record(score_key(scorer={"name": "clipish"}, image=image, prompt=prompt), SCORE,
                              f"clipish:{image[:8]}", {"scorer": "clipish", "image": image, "prompt": prompt,
                                                       "score": score, "higher_is_better": True}))
    return records


@pytest.fixture
def calls(monkeypatch):
    """Counts how often the analysis is computed and the report rendered (Run imports both at call time)."""
    counts = {"analyze": 0, "report": 0}
    real_analyze, real_report = audit.analyze, html.write_report

    def analyze(*a, **k):
        counts["analyze"] += 1
        return real_analyze(*a, **k)

    def write_report(*a, **k):
        counts["report"] += 1
        return real_report(*a, **k)

    monkeypatch.setattr(audit, "analyze", analyze)
    monkeypatch.setattr(html, "write_report", write_report)
    return counts


def _open(root, **overrides) -> Run:
    return Run.open(root, overrides={"analysis.bootstrap": 100, **overrides})


@pytest.fixture
def run(tmp_path) -> Run:
    run = _open(tmp_path / "run")
    run.store.put_many([r for i in range(3) for r in _pair(run.store, i)])
    return run


def _files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [root / "analysis.json", root / "report.html", *(root / "tables").iterdir()]}


def test_an_unchanged_run_reuses_every_derived_file(run, calls, cli):
    first = run.report()
    before = _files(run.store.root)
    assert calls == {"analyze": 1, "report": 1}

    again = _open(run.store.root)  # a new command on the same run
    assert again.report() == first
    assert calls == {"analyze": 1, "report": 1}
    assert _files(run.store.root) == before  # not even rewritten: the report keeps its date
    # What a reused analysis returns is what the analysis computes.
    assert again.analyze() == audit.analyze(again.store, again.config.analysis, seed=again.config.seed)

    # The command says the same as when it computed them.
    code, _, err = cli("report", run.store.root, "--set", "analysis.bootstrap=100")
    assert code == 0 and calls["report"] == 1
    assert f"analysis: {run.store.root / 'analysis.json'}" in err and f"report: {first}" in err


def test_a_new_record_recomputes(run, calls):
    run.report()
    run.store.put_many(_pair(run.store, 3))
    assert _open(run.store.root).analyze()["n_pairs"] == 4
    assert calls["analyze"] == 2
    assert "number 3" in _open(run.store.root).report().read_text(encoding="utf-8")
    assert calls["report"] == 2


def test_a_record_written_during_the_analysis_is_not_missed(run, calls, monkeypatch):
    """Another process may write while the analysis runs: its files must not count as current for the
    records written after they were read."""
    counted = audit.analyze

    def analyze_while_another_process_writes(store, *a, **k):
        result = counted(store, *a, **k)
        if calls["analyze"] == 1:
            store.put_many(_pair(store, 5))
        return result

    monkeypatch.setattr(audit, "analyze", analyze_while_another_process_writes)
    assert run.analyze()["n_pairs"] == 3
    assert _open(run.store.root).analyze()["n_pairs"] == 4
    assert calls["analyze"] == 2


def test_a_failure_replaced_by_another_failure_recomputes(run, calls):
    """Same counts per stage and status, another reason: the report lists the reason, so it is made again."""
    key = score_key(scorer={"name": "clipish"}, image="0" * 64, prompt="x")
    run.store.put(Record.failed(key, SCORE, "clipish:broken", "reason one"))
    run.report()
    counts = run.store.counts()
    assert run.store.put(Record.failed(key, SCORE, "clipish:broken", "reason two"))  # a retry that failed again
    assert run.store.counts() == counts

    analysis = _open(run.store.root).analyze()
    assert [i["error"] for i in analysis["failures"]["items"]] == ["reason two"]
    page = _open(run.store.root).report().read_text(encoding="utf-8")
    assert "reason two" in page and "reason one" not in page
    assert calls == {"analyze": 2, "report": 2}


def test_a_changed_analysis_setting_recomputes(run, calls):
    run.report()
    assert _open(run.store.root, **{"analysis.bootstrap": 120}).analyze()["config"]["bootstrap"] == 120
    assert calls["analyze"] == 2
    # The setting persisted with the run: the next command without the flag finds the files current.
    assert Run.open(run.store.root).analyze()["config"]["bootstrap"] == 120
    assert calls["analyze"] == 2


def test_a_changed_setting_outside_the_analysis_remakes_the_report(run, calls):
    """The methods section prints the whole resolved config."""
    run.report()
    page = _open(run.store.root, **{"score.chunk_size": 7}).report().read_text(encoding="utf-8")
    assert "&quot;chunk_size&quot;: 7" in page  # the resolved config, escaped
    assert calls["report"] == 2


@pytest.mark.parametrize("name, made_by", [("analysis.json", "analyze"), ("tables/summary.csv", "analyze"),
                                           ("report.html", "report")])
def test_a_deleted_or_edited_file_is_made_again(run, calls, name, made_by):
    run.report()
    path = run.store.root / name
    original = path.read_bytes()
    path.unlink()
    _open(run.store.root).report()
    assert calls[made_by] == 2 and sum(calls.values()) == 3  # only the step that makes the file ran again
    path.write_bytes(path.read_bytes() + b" ")  # edited by hand
    _open(run.store.root).report()
    assert calls[made_by] == 3 and sum(calls.values()) == 4
    if made_by == "analyze":  # the same inputs give the same bytes
        assert path.read_bytes() == original
