"""benchmarks/bench_pipeline.py runs at a tiny size: its store section times the four write paths, and every resume
check finds all items cached, i.e. the synthetic records carry the keys the stages compute (the stage
processes report the counts read back). The stage and demo sections are left out to keep the test short;
the resume checks run through the same per-process path. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


def test_the_pipeline_benchmark_measures_what_it_says(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--store-records", "200", "--rounds", "1",
                           "--resume-items", "200", "--skip", "stages", "--skip", "demo", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(out.read_text())

    store = figures["store"]
    assert store["records"] == 200 and store["stage_path"] == "store.writer()"
    assert set(store["sides"]) == {"store.writer()", "store.put_many", "sqlite3, a transaction per row",
                                   "sqlite3, one transaction", "sqlite3, one transaction, JSON made per record"}
    assert store["sides"]["sqlite3, one transaction"]["ratio"] == 1.0
    assert store["sides"]["sqlite3, one transaction, JSON made per record"]["ratio_same_job"] == 1.0

    resume = figures["resume"]
    for stage in ("prompts", "score", "judge", "labels"):
        assert resume[stage]["all_cached"], (stage, resume[stage])
        assert resume[stage]["counts"] == {"total": 200, "new": 0, "cached": 200, "failed": 0}
        assert resume[stage]["walls"] and resume[stage]["cpu"] > 0
    assert "stages" not in figures and "demo" not in figures
